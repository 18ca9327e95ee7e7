"""``python -m greenlang_crypto`` runs the CLI."""

from greenlang_crypto.cli import main

raise SystemExit(main())
