from gshutdown.cli import main

raise SystemExit(main())
