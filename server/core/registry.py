"""The model registry: which versions of which models are served, loading, polling and swapping them.

A version policy (`--version-policy`, as Triton's) says which versions of each model to serve:

    latest:N       the N newest versions that load (default latest:1)
    all            every version in the repository
    specific:1,3   exactly these

A version is read through export/repository.py (which verifies every file's SHA-256), opened and warmed up
(models.py), and only then swapped in, on the event loop. The registry polls the repository: a new version
that the policy wants is loaded; a version that fails is refused with a log line and reported UNAVAILABLE
with its reason, while what was served keeps serving; a refused version whose files change (fixed in place)
is tried again on the next poll. A version the policy no longer wants is retired: its batcher finishes what
it has queued. A served version whose files disappear from disk keeps serving from memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from export.repository import RepositoryError, list_models, list_versions
from server.core.batcher import Batcher
from server.core.errors import InvalidRequest, ModelLoadError, ModelNotFound, ServerError
from server.core.models import LoadedModel, ModelObserver, _NullModelObserver, load_model
from server.core.runner import Device
from server.core.settings import CoreSettings, VersionPolicy
from server.core.stats import BothObservers

log = logging.getLogger("aegen.server.registry")

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"


@dataclass(frozen=True)
class VersionState:
    name: str
    version: int
    state: str  # READY, UNAVAILABLE or LOADING
    reason: str = ""


class ModelRegistry:
    """The served versions of each model; `resolve` is what the data plane calls."""

    def __init__(self, config: CoreSettings, device: Device, observer: ModelObserver | None = None) -> None:
        self.config = config
        self.device = device
        self.observer = observer or _NullModelObserver()
        self.repository = Path(config.repository)
        self.policy: VersionPolicy = config.policy
        self._served: dict[str, dict[int, LoadedModel]] = {}
        self._states: dict[tuple[str, int], VersionState] = {}
        self._refused: dict[tuple[str, int], tuple] = {}  # → the files' fingerprint when refused
        self._retiring: set[asyncio.Task] = set()

    # ------------------------------------------------------------------------------------- lookups

    def resolve(self, name: str, version: int | None = None) -> LoadedModel:
        """The served `version` of `name` (the newest served one when None); ModelNotFound with the reason."""
        if not name:
            raise InvalidRequest("a model name is required; the server lists the loaded models")
        served = self._served.get(name)
        if not served:
            loaded = ", ".join(sorted(self._served)) or "none"
            raise ModelNotFound(f"no model {name!r} is loaded; loaded: {loaded}")
        if version is None:
            return served[max(served)]
        model = served.get(version)
        if model is None:
            state = self._states.get((name, version))
            why = f" ({state.state}: {state.reason})" if state and state.reason else ""
            raise ModelNotFound(f"model {name!r} version {version} is not served{why}; serving versions "
                                f"{', '.join(map(str, sorted(served)))}")
        return model

    def is_loaded(self, name: str) -> bool:
        return bool(self._served.get(name))

    def models(self) -> list[LoadedModel]:
        """The default (newest served) version of each model, by name."""
        return [versions[max(versions)] for _, versions in sorted(self._served.items()) if versions]

    def versions(self, name: str) -> list[LoadedModel]:
        """Every served version of `name`, oldest first ([] when none)."""
        served = self._served.get(name, {})
        return [served[v] for v in sorted(served)]

    def states(self) -> list[VersionState]:
        """Every version the registry knows of (served, refused, retired), by model and version."""
        return [self._states[key] for key in sorted(self._states)]

    # ------------------------------------------------------------------------------------- loading

    async def load_initial(self) -> None:
        """Load every configured model's versions; ModelLoadError if any model has none that loads."""
        try:
            names = list(self.config.models) or list_models(self.repository)
        except RepositoryError as exc:
            raise ModelLoadError(str(exc)) from None
        if not names:
            raise ModelLoadError(f"{self.repository}: no models in the repository")
        for name in names:
            await self._sync(name)
            if not self.is_loaded(name):
                raise ModelLoadError(f"model {name!r}: no version of it could be loaded (see the log)")

    async def poll_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        names = list(self._served) if self.config.models else await asyncio.to_thread(self._listed_models)
        for name in names:
            await self._sync(name)

    async def close(self) -> None:
        served, self._served = self._served, {}
        await asyncio.gather(*(m.batcher.close() for versions in served.values() for m in versions.values()
                               if m.batcher), *self._retiring)

    # ------------------------------------------------------------------------------------- internals

    def _listed_models(self) -> list[str]:
        try:
            return sorted(set(list_models(self.repository)) | set(self._served))
        except RepositoryError as exc:
            log.warning("cannot list the model repository", extra={"error": str(exc)})
            return list(self._served)

    async def _sync(self, name: str) -> None:
        """Bring `name`'s served versions to what the policy wants of what is on disk (and in memory)."""
        served = self._served.setdefault(name, {})
        try:
            on_disk = await asyncio.to_thread(list_versions, self.repository, name)
        except RepositoryError as exc:
            log.warning("cannot list versions", extra={"model": name, "error": str(exc)})
            on_disk = []
        candidates = sorted(set(on_disk) | set(served), reverse=True)
        if self.policy.kind == "specific":
            for version in self.policy.versions:
                if version not in candidates:
                    self._set_state(name, version, UNAVAILABLE, "not in the model repository")
            candidates = [v for v in candidates if v in self.policy.versions]
        wanted: list[int] = []
        for version in candidates:
            if self.policy.kind == "latest" and len(wanted) >= self.policy.count:
                break
            if version in served or await self._load(name, version):
                wanted.append(version)
        for version in [v for v in served if v not in wanted]:
            self._retire(name, version, "unloaded: no longer wanted by the version policy")
        if not served:
            self._served.pop(name, None)

    async def _load(self, name: str, version: int) -> bool:
        key = (name, version)
        fingerprint = await asyncio.to_thread(_fingerprint, self.repository / name / str(version))
        if key in self._refused and self._refused[key] == fingerprint:
            return False
        self._set_state(name, version, LOADING)
        started = time.perf_counter()
        try:
            model = await asyncio.to_thread(load_model, self.repository, name, version, self.device, self.config)
        except ServerError as exc:
            self._refused[key] = fingerprint
            self._set_state(name, version, UNAVAILABLE, str(exc))
            log.error("model version refused", extra={"model": name, "version": version, "error": str(exc)})
            return False
        self._refused.pop(key, None)
        self._activate(model, time.perf_counter() - started)
        return True

    def _activate(self, model: LoadedModel, load_seconds: float) -> None:
        telemetry = self.observer.batch_observer(model.name, model.device)
        model.batcher = Batcher(model.decoders, self.config.batching,
                                model.stats if telemetry is None else BothObservers(telemetry, model.stats),
                                name=f"{model.name}-{model.number}", draw=model.draw)
        model.batcher.start()
        versions = self._served.setdefault(model.name, {})
        newest_before = max(versions) if versions else None
        versions[model.number] = model  # the swap: one assignment on the event loop
        self._set_state(model.name, model.number, READY)
        self.observer.model_loaded(model.name, model.number, model.device, model.execution_provider)
        log.info("model version serving", extra={
            "model": model.name, "version": model.number, "device": model.device,
            "execution_provider": model.execution_provider, "samplers": list(model.info.samplers),
            "load_seconds": round(load_seconds, 3), "replaces": newest_before})

    def _retire(self, name: str, version: int, reason: str) -> None:
        old = self._served[name].pop(version)
        self._set_state(name, version, UNAVAILABLE, reason)
        self.observer.model_unloaded(old.name, old.number)
        log.info("model version retired", extra={"model": name, "version": version})
        task = asyncio.get_running_loop().create_task(old.batcher.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _set_state(self, name: str, version: int, state: str, reason: str = "") -> None:
        self._states[(name, version)] = VersionState(name, version, state, reason)


def _fingerprint(directory: Path) -> tuple:
    """(name, size, mtime) of every file of a version directory: a version fixed in place changes it."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(directory)))
    except OSError:
        return ()
