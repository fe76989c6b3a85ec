from pyserving.cli.main import main

raise SystemExit(main())
