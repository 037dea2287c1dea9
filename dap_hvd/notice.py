"""A job-wide error under horovodrun's elastic mode (--elastic).

Horovod's elastic driver reads a rank's non-zero exit as a failed host: it blacklists the host
and the survivors re-form without it. For a deterministic error (a bad file, a bad flag) that is
wrong: the survivors re-shard, the same file lands on another rank, and host after host is lost
until fewer than --min-np remain, with a message about ranks, not about the file. So the rank
whose error ends the job first leaves it in the launcher's rendezvous store (the key-value HTTP
server every elastic worker already talks to), and a survivor reads it when Horovod rolls it back
(`ElasticCommit.restore`, before it re-registers): it fails with the same line, and once every
rank has failed the driver ends the job. The store lives as long as the round, so the notice is
seen by exactly the survivors of that round. No torch, no horovod: the supervisor uses it too.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Optional

_PATH = "/dap_hvd/fatal"  # an ad-hoc scope of the rendezvous store: never cleared by Horovod mid-round
_TIMEOUT_S = 5.0


def _url() -> Optional[str]:
    addr, port = os.environ.get("HOROVOD_GLOO_RENDEZVOUS_ADDR"), os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT")
    if os.environ.get("HOROVOD_ELASTIC") != "1" or not addr or not port:
        return None
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}{_PATH}"


def _open(request):
    # Straight to the launcher: a cluster's http_proxy must not carry this.
    return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=_TIMEOUT_S)


def announce_fatal(message: str) -> None:
    """This rank's error ends the whole job (a no-op outside elastic mode)."""
    url = _url()
    if url is None:
        return
    try:
        _open(urllib.request.Request(url, data=message.encode(), method="PUT")).close()
    except (OSError, ValueError):
        pass  # the launcher is gone: there is no job left to tell


def fatal_announced() -> Optional[str]:
    """The error another rank announced in this round, or None."""
    url = _url()
    if url is None:
        return None
    try:
        with _open(url) as r:
            return r.read().decode(errors="replace") or None
    except (OSError, ValueError):  # 404 (HTTPError is an OSError): nothing announced
        return None
