"""The latent explorer's browser tests: headless Debian chromium through chromedriver (selenium), against a
real server that serves the tests' digits-vae (latent 8) and digits-ae, and a tiny 2-D VAE of 1s and 8s.

`make tools` installs chromium and chromium-driver; without them these tests skip, saying so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.checkpoints import TINY
from tests.plugins.repository import export_for_tests
from tests.plugins.server import RunningServer, copy_repository, start_aegen_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PLANE_MODEL = "digits18-vae2"  # as make demo names its 2-D VAE of digits 1 and 8


def browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return f"{' and '.join(missing)} missing (Debian packages chromium and chromium-driver; `make tools`)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra; `make venv`)"
    return None


def new_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1500", "--force-device-scale-factor=1", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="session")
def plane_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP VAE with a 2-D latent space on the digits 1 and 8 only, as the report's (hidden 512, λ 2)
    but for 8 epochs instead of 30: a few seconds, and a plane that already looks like one in the screenshot."""
    from training.train import TrainOptions, train

    out = tmp_path_factory.mktemp("checkpoints") / "vae2-1-8"
    return train(TrainOptions(**{**TINY, "kind": "vae", "arch": "mlp", "latent_dim": 2, "hidden_dim": 512,
                                 "classes": (1, 8), "kl_weight": 2.0, "augment": False, "epochs": 8,
                                 "limit": None, "batch_size": 128, "out": str(out)}))


@pytest.fixture(scope="session")
def explorer_repository(model_repository: Path, plane_checkpoint: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared test repository plus the 2-D model (read-only: servers that change it copy it)."""
    repository = copy_repository(model_repository, tmp_path_factory.mktemp("explorer") / "repository")
    export_for_tests(plane_checkpoint, repository, PLANE_MODEL)
    return repository


@pytest.fixture(scope="module")
def explorer_server(explorer_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("explorer-server")
    server = start_aegen_server(copy_repository(explorer_repository, tmp / "repository"), tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    driver = new_browser()
    yield driver
    driver.quit()


@pytest.fixture
def docs_dir() -> Path:
    """Where the screenshots for the README and docs/explorer.md go."""
    directory = Path(__file__).resolve().parents[2] / "docs"
    assert directory.is_dir()
    return directory
