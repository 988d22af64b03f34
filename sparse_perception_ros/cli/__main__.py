"""``python -m sparse_perception_ros.cli``: the same as the ``sparse-perception`` console script."""

import sys

from sparse_perception_ros.cli import main

sys.exit(main())
