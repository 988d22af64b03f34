"""Shared pytest setup.

ROS tests talk over real DDS. Each pytest session picks its own ROS_DOMAIN_ID (children
inherit it) so parallel runs on one machine cannot hear each other, and every participant uses
the project's FastDDS profile (config/fastdds_large_data.xml), as the README asks of a real system.
"""

import os
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_large_data.xml"))
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "1")
# One intra-op thread per process: on a loaded 2-core machine OpenMP's spinning threads make
# small models 10-50x slower (measured: tiny preset step 64 ms with 1 thread, 0.5-4 s with 2).
os.environ.setdefault("OMP_NUM_THREADS", "1")
