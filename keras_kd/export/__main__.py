"""``python -m keras_kd.export MODEL.keras [options]``: ``keras-kd export``."""

import sys

from keras_kd.app.export_command import main

sys.exit(main())
