"""`dap-hvd bench`: the benchmark suite, one module per BENCHMARKS.md section.

suite.py runs the sections and writes the document; report.py holds what their renderers share; jobs.py
launches the CPU jobs; gpu/ is the GPU section, one module per part. Nothing is imported here, so that
`python -m dap_hvd.bench.selection_step` under horovodrun loads only what it needs.
"""


def main(argv=None) -> int:
    """`dap-hvd bench ARGS` (see suite.py)."""
    from dap_hvd.bench.suite import main as suite_main

    return suite_main(argv)
