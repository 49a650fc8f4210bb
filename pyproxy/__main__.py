from pyproxy.cli import main

raise SystemExit(main())
