import sys

from bwplan.cli.main import main

sys.exit(main())
