from dap_hvd.cli import main

raise SystemExit(main())
