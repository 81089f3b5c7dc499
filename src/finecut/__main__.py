from finecut.cli import main

raise SystemExit(main())
