import sys

from flant5_lib.cli import main

sys.exit(main())
