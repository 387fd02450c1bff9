"""Every exit code of every process and command, named once (sysexits.h where one fits).

supervisord.conf lists the codes after which a program is not restarted (`exitcodes`): a
configuration or data error does not go away by starting the same program again.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a command failed for a reason it printed
EXIT_USAGE = 2  # wrong arguments (argparse's own code), or interrupted
EXIT_NOT_FOUND = 3  # `featurestore features`: the entity has no events by then
EXIT_DATA = 65  # EX_DATAERR: a corrupt or foreign store file, an unknown schema
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: another stack holds this DATA_DIR
EXIT_IOERR = 74  # EX_IOERR: the store cannot be written now (disk full, an I/O error)
EXIT_CONFIG = 78  # EX_CONFIG: an invalid setting, definitions or key file

# Exits that a supervisor must not answer by restarting the program.
FINAL_EXIT_CODES = (EXIT_DATA, EXIT_UNAVAILABLE, EXIT_CONFIG)
