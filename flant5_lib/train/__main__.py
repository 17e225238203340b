"""`python -m flant5_lib.train --params FILE [--set k=v ...]`: the entry point a Vertex training job runs."""

import sys

from flant5_lib.train.loop import main

sys.exit(main())
