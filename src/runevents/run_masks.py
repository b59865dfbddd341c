"""Masking for producers' batches (contract section 11, external runs).

An executed run is masked by its executor (``executor.py``), which holds the
run from start to end in one process. An external run's batches may reach any
replica, one after another, so its masking state cannot live in one process's
memory alone:

* the declared secrets come from the run's configuration, if the server has
  one registered under that id (external runs need none);
* the ``::add-mask::`` values a producer sent are stored **sealed**
  (:mod:`runevents.secretbox`) in ``run_masks``, keyed by a keyed hash of the
  value, so the next replica loads them; the value itself never reaches the
  database, a log or a response.

A process caches the masker of a run whose writer it holds (the manager's
``_held``): while it holds the writer nobody else can append to the run, so
nobody else can have added a mask. Any other batch -- the first one here, or
the first after the writer moved -- loads the masks from the database. The
cache is a bounded LRU; an evicted run is simply loaded again.

Hooked into ``ProducerIngest.ingest`` (``producer.py``) under the run's lock,
before the idempotency check: the stored payloads are the masked ones, so a
retried batch, masked the same way, compares equal to what the log holds.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence

import orjson

from runevents.configs import ConfigRegistry
from runevents.db.repository import RunRepository
from runevents.events import CONSOLE_LINE, EventDraft
from runevents.exceptions import ConfigurationNotFound, StorageError
from runevents.masking import (
    ADD_MASK_BYTES,
    Masker,
    add_mask_applies,
    add_mask_value,
    has_add_mask,
)
from runevents.models import Run
from runevents.secretbox import SecretBox, new_key

#: maskers kept for held runs (each holds a few compiled automatons)
CACHE_RUNS = 1024
#: name of the mask-sealing key in ``server_keys``
SEAL_KEY_NAME = "run_masks"


class RunMasks:
    """The maskers of the external runs this process ingests for."""

    def __init__(self, repo: RunRepository, configs: ConfigRegistry) -> None:
        self.repo = repo
        self.configs = configs
        self._box: SecretBox | None = None
        self._cache: OrderedDict[str, Masker] = OrderedDict()

    async def _secretbox(self) -> SecretBox:
        if self._box is None:
            key = await self.repo.server_key(SEAL_KEY_NAME, new_key())
            self._box = SecretBox(bytes.fromhex(key))
        return self._box

    def declared(self, workspace_id: str, configuration_id: str) -> list[str]:
        """The secret values of the configuration registered under these ids (none: [])."""
        try:
            config = self.configs.get(workspace_id, configuration_id)
        except ConfigurationNotFound:
            return []
        return list(config.secret_values.values())

    def _declared(self, run: Run) -> list[str]:
        return self.declared(run.workspace_id, run.configuration_id)

    async def masker(self, run: Run, *, held: bool) -> Masker:
        """The run's masker: cached while ``held``, else loaded from the database."""
        masker = self._cache.get(run.id) if held else None
        if masker is not None:
            self._cache.move_to_end(run.id)
            return masker
        masker = Masker(self._declared(run))
        await self._add_stored(masker, run.id)
        self._cache[run.id] = masker
        while len(self._cache) > CACHE_RUNS:
            self._cache.popitem(last=False)
        return masker

    async def _add_stored(self, masker: Masker, run_id: str) -> None:
        """Add the run's stored (sealed) ``::add-mask::`` values to ``masker``."""
        sealed = await self.repo.run_masks(run_id)
        if sealed:
            box = await self._secretbox()
            masker.add(*[value for value in map(box.open, sealed) if value])

    async def mask_batch(
        self, run: Run, drafts: Sequence[EventDraft], *, held: bool, raw: bytes | None = None
    ) -> list[EventDraft]:
        """``drafts`` masked; the batch's new ``::add-mask::`` values stored (sealed) first.

        ``raw``: the NDJSON body the drafts were decoded from, if they were: the
        masker searches it instead of encoding the drafts again (``Masker.mask_drafts``).
        """
        masker = await self.masker(run, held=held)
        known = len(masker.values)
        out = masker.mask_drafts(drafts, raw)
        added = masker.values[known:]
        if added:
            box = await self._secretbox()
            await self.repo.add_run_masks(run.id, [(box.digest(v), box.seal(v)) for v in added])
        return out

    async def mask_error(
        self, workspace_id: str, configuration_id: str, run_id: str, message: str, body: bytes
    ) -> str:
        """``message`` (a refused batch's error) with the run's secrets masked.

        A batch is parsed (and may be refused) before it is masked, and an error
        can quote the offending value (``created_at 'VALUE' is not ...``). The
        masks are those of the path's configuration, the run's stored
        ``::add-mask::`` values and any the refused body itself declares (it was
        not applied, but its producer meant the value to stay hidden).
        """
        masker = Masker(self.declared(workspace_id, configuration_id))
        # the database away: the declared secrets are still masked
        with contextlib.suppress(StorageError):
            await self._add_stored(masker, run_id)
        if has_add_mask(body):
            masker.add(*_body_add_masks(body))
        return masker.mask_text(message)[0] if masker else message


def _body_add_masks(body: bytes) -> list[str]:
    """The ``::add-mask::`` values of the console lines of an NDJSON body, as far as
    its lines parse (a refused body may hold a bad line)."""
    values: list[str] = []
    for line in body.split(b"\n"):
        if ADD_MASK_BYTES not in line:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict) or event.get("type") != CONSOLE_LINE:
            continue  # (a refused body's line may be any JSON value)
        payload = event.get("payload")
        message = payload.get("message") if isinstance(payload, dict) else None
        if isinstance(message, str):
            value = add_mask_value(message)
            if value is not None and add_mask_applies(value):
                values.append(value)
    return values
