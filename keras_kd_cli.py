"""The former launcher module of the ``keras-kd`` command, kept as a thin
alias: the launcher lives in the package now (:mod:`keras_kd.app.launcher`,
the parser in :mod:`keras_kd.app.parser`, its settings in
:mod:`keras_kd.app.options`). ``import keras_kd_cli`` imports no Keras.

Kept while code outside the launcher still imports it
(``keras_kd.app.export_command``); new code imports ``keras_kd.app.parser``.
"""

import sys

from keras_kd.app.launcher import (  # noqa: F401
    NATIVE_LOG_LINE, QUIET_ENVIRONMENT, execute, main, missing_backend,
    quiet_native_logs, without_native_log_lines)
from keras_kd.app.options import *  # noqa: F401,F403
from keras_kd.app.options import (  # noqa: F401
    APPLICATIONS, BUILTIN_MODELS, DEFAULT_TEMPERATURE, DEFAULTS, IMAGE_ONLY,
    LM_DEFAULTS, LM_ONLY, LM_OBJECTIVES, LM_QUICK, LM_SIZES, MAX_SEED,
    OBJECTIVES, OFFLINE_DATASETS, PROG, QUANTIZE_MODES, QUICK,
    SEARCH_DEFAULTS, SEARCH_QUICK, TASK_DEFAULTED, TASKS, USUAL_TEMPERATURE)
from keras_kd.app.parser import (  # noqa: F401
    add_export_arguments, add_export_parser, add_run_parser,
    add_search_parser, apply_task_defaults, build_parser, check_run_options,
    given_run_options, run_option_error, version)

if __name__ == "__main__":
    sys.exit(main())
