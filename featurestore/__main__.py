"""`python -m featurestore ...`: the same as the `featurestore` command."""

import sys

from featurestore.cli import main

sys.exit(main())
