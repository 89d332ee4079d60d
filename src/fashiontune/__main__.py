from fashiontune.cli import main

raise SystemExit(main())
