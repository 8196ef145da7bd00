from pipeline.report.stage import main

raise SystemExit(main())
