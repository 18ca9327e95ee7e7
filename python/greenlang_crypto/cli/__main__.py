"""``python -m greenlang_crypto.cli``: the ``greenlang-crypto`` command."""

from greenlang_crypto.cli import main

raise SystemExit(main())
