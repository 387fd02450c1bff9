import sys

from drift.main import main

sys.exit(main())
