"""Every Python block of the documentation site (docs/**/*.md) and README.md runs, as written.

Each chain of blocks (a block and the ``<!-- docs: continue -->`` blocks after it) runs in a
fresh module namespace, in its own temporary working directory, with ``GLC_DATA_DIR`` set to a
new directory there and no other ``GLC_*`` variable: the embedded default, no AWS, no server.
Blocks marked ``requires GLC_...`` run against the test services when those variables are set
(``make test-py`` sets them), which the runner also offers under the names a reader's own
setup would use: the moto server as ``AWS_ENDPOINT_URL`` (KMS and S3, with dummy
credentials), Redis as ``REDIS_URL`` and PostgreSQL as ``DATABASE_URL``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs.blocks import Block, block_module, chains, python_blocks, run_block

ROOT = Path(__file__).resolve().parents[2]
# README.md is the first page most readers see; its examples are held to the site's rules.
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
BLOCKS = [block for page in PAGES for block in python_blocks(page)]
CHAINS = chains(BLOCKS)


def test_the_site_has_blocks_to_run() -> None:
    # A collector that found nothing would pass every page.
    assert len(CHAINS) >= 10
    assert {chain[0].path.name for chain in CHAINS} >= {
        "getting-started.md",
        "index.md",
        "README.md",
    }


def test_few_blocks_are_exempt_and_each_says_why() -> None:
    exempt = [b for b in BLOCKS if b.no_run is not None]
    assert all(b.no_run for b in exempt)
    assert len(exempt) <= len(BLOCKS) // 3, [b.name for b in exempt]


@pytest.mark.parametrize("chain", CHAINS, ids=[chain[0].name for chain in CHAINS])
def test_block_runs(chain: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = sorted({name for b in chain for name in b.requires if not os.environ.get(name)})
    if missing:
        pytest.skip(f"the block needs {', '.join(missing)} (a test service)")
    services = {name for b in chain for name in b.requires}
    # A reader's clean environment: none of the suite's GLC_* settings (an audit URL, anchors,
    # a key store) reaches a block, only the services it declares.
    for name in [n for n in os.environ if n.startswith("GLC_") and n not in services]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GLC_DATA_DIR", str(tmp_path / "glc-data"))
    if "GLC_KMS_ENDPOINT" in services:
        monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ["GLC_KMS_ENDPOINT"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.delenv("AWS_PROFILE", raising=False)
    if "GLC_REDIS_URL" in services:
        monkeypatch.setenv("REDIS_URL", os.environ["GLC_REDIS_URL"])
    if "GLC_PG_URL" in services:
        monkeypatch.setenv("DATABASE_URL", os.environ["GLC_PG_URL"])
    with block_module(f"_glc_docs_{chain[0].path.stem}_{chain[0].line}") as namespace:
        for block in chain:
            run_block(block, namespace)
