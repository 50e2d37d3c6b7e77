"""The contribution queue: members send samples with a claimed label; a steward accepts or rejects.

A contribution never reaches training data by itself. Its bytes are kept under the service home by
content hash (one copy per distinct file), its record in the service database; accepting it writes it
into ``data/raw/<task>`` in the task's real-data layout, so the next ``dvc commit``/``dvc repro`` makes a
new data version that is validated like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mlops.inference.images import sniff_image_type
from mlops.members.schema import CONTRIBUTIONS, engine, storable
from mlops.tasks import get_task
from mlops.tasks.capabilities import TakesContributions

_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg"}


#: Longest free-text form field kept with a contribution.
MAX_FIELD_CHARS = 200
#: Contributions one member may have waiting for review through the service (each at most the upload limit, so at
#: most 50 x 8 MiB stored per member before a steward has looked); one more is refused with 429.
PENDING_PER_MEMBER = 50


def _spreadsheet_formula(value: str) -> bool:
    """A value a spreadsheet would run as a formula (CSV injection); a negative number is fine."""
    value = value.strip()
    if not value:
        return False
    if value[0] == "-":
        return not value[1:].replace(".", "", 1).isdigit()
    return value[0] in "=+@\t\r" or not value.isprintable()


class ReviewError(ValueError):
    """A contribution or review that cannot be done; the message says why and what to do."""


class QuotaExceeded(ReviewError):
    """The member already has as many contributions waiting for review as one member may (a storage quota)."""


@dataclass(frozen=True)
class Contribution:
    id: int
    task: str
    member: str
    claimed_label: str
    meta: dict[str, str]
    content_sha256: str
    suffix: str
    received_at: str
    status: str
    reviewed_by: str | None
    reviewed_at: str | None
    review_note: str | None
    sample_id: str | None

    @classmethod
    def from_row(cls, row: Any) -> Contribution:
        data = {k: row[k] for k in cls.__dataclass_fields__}
        data["meta"] = json.loads(row["meta"])
        return cls(**data)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ReviewQueue:
    def __init__(self, url: str, blob_dir: Path, pending_per_member: int | None = None):
        self.engine = engine(url)
        self.blob_dir = Path(blob_dir)
        #: a member's contributions waiting for review, at most (each at most the upload limit): what one member can
        #: make the service store before a steward has looked. None: no quota (the steward's CLI).
        self.pending_per_member = pending_per_member

    def blob(self, c: Contribution) -> Path:
        return self.blob_dir / c.task / f"{c.content_sha256}{c.suffix}"

    def submit(
        self, task: str, member: str, key_id: str | None, data: bytes, label: str, meta: dict[str, str]
    ) -> Contribution:
        """Queue one upload (already size-checked and decodable); ReviewError for a bad claim or a repeat."""
        spec = get_task(task)
        if not isinstance(spec, TakesContributions):
            raise ReviewError(f"{task} takes no contributions")
        if label not in spec.contribution_labels:
            raise ReviewError(f"unknown label {label!r} for {task}; choose one of {list(spec.contribution_labels)}")
        missing = [f for f in spec.contribution_fields if not str(meta.get(f, "")).strip()]
        if missing:
            raise ReviewError(f"a {task} contribution needs {missing} as well (form fields)")
        formulas = [f for f in spec.contribution_fields if _spreadsheet_formula(str(meta[f]))]
        if formulas:  # the fields end up in labels.csv, which stewards open in spreadsheets
            raise ReviewError(f"{formulas}: a field may not start with =, +, -, @ or a control character")
        too_long = [f for f in spec.contribution_fields if len(str(meta[f])) > MAX_FIELD_CHARS]
        if too_long:
            raise ReviewError(f"{too_long}: at most {MAX_FIELD_CHARS} characters per field")
        kind = sniff_image_type(data)
        if kind is None:
            raise ReviewError("not a PNG or JPEG image (checked by its first bytes)")
        if self.pending_per_member is not None:
            waiting = self._pending_of(member)
            if waiting >= self.pending_per_member:
                raise QuotaExceeded(
                    f"{member} already has {waiting} contributions waiting for review, the most one member may "
                    f"(a storage quota): send more once a steward has reviewed some"
                )
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_dir / task / f"{digest}{_SUFFIX[kind]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # a temporary name of its own: two identical uploads at once must not write one ".part" file together
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest}.", suffix=".part")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        row = {
            "task": task,
            "member": member,
            "key_id": key_id,
            "claimed_label": label,
            "meta": json.dumps({f: str(meta[f]) for f in spec.contribution_fields}, sort_keys=True),
            "content_sha256": digest,
            "suffix": _SUFFIX[kind],
            "received_at": _now(),
            "status": "pending",
        }
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(CONTRIBUTIONS.insert().values(**row)).inserted_primary_key[0]
        except IntegrityError as exc:
            raise ReviewError(f"this image (sha256 {digest[:12]}…) was already contributed to {task}") from exc
        return self.get(int(new_id))

    def _pending_of(self, member: str) -> int:
        query = sa.select(sa.func.count()).where(CONTRIBUTIONS.c.member == member, CONTRIBUTIONS.c.status == "pending")
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def get(self, contribution_id: int) -> Contribution:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(CONTRIBUTIONS).where(CONTRIBUTIONS.c.id == contribution_id)).mappings().first()
        if row is None:
            raise ReviewError(f"no contribution #{contribution_id}; `mlops data review list` shows them")
        return Contribution.from_row(row)

    def list(self, task: str | None = None, status: str | None = "pending") -> list[Contribution]:
        if "\0" in (task or "") + (status or ""):  # no stored row holds a NUL, and PostgreSQL refuses one in a query
            return []
        query = sa.select(CONTRIBUTIONS).order_by(CONTRIBUTIONS.c.id)
        if task:
            query = query.where(CONTRIBUTIONS.c.task == task)
        if status:
            query = query.where(CONTRIBUTIONS.c.status == status)
        with self.engine.connect() as conn:
            return [Contribution.from_row(r) for r in conn.execute(query).mappings()]

    def _decide(self, contribution_id: int, reviewer: str, status: str, note: str, sample_id: str | None) -> None:
        # The note is free text from the steward's request; one the database cannot store failed here, after accept
        # had written the sample into the raw data: a 500, the contribution left pending and every retry refused.
        note, reviewer = storable(note), storable(reviewer)
        with self.engine.begin() as conn:
            done = conn.execute(
                CONTRIBUTIONS.update()
                .where(CONTRIBUTIONS.c.id == contribution_id, CONTRIBUTIONS.c.status == "pending")
                .values(status=status, reviewed_by=reviewer, reviewed_at=_now(), review_note=note, sample_id=sample_id)
            ).rowcount
        if done != 1:
            raise ReviewError(f"contribution #{contribution_id} was reviewed by someone else meanwhile")

    def _pending(self, contribution_id: int) -> Contribution:
        c = self.get(contribution_id)
        if c.status != "pending":
            raise ReviewError(f"contribution #{c.id} is already {c.status} (by {c.reviewed_by} at {c.reviewed_at})")
        return c

    def accept(self, contribution_id: int, reviewer: str, raw_root: Path, note: str = "") -> tuple[Contribution, Path]:
        """Write the sample into ``raw_root/<task>`` and mark it accepted; returns it and the written file."""
        c = self._pending(contribution_id)
        blob = self.blob(c)
        if not blob.is_file():
            raise ReviewError(f"the stored file of #{c.id} is missing ({blob}); reject it and ask for a resend")
        data = blob.read_bytes()
        if hashlib.sha256(data).hexdigest() != c.content_sha256:
            raise ReviewError(f"the stored file of #{c.id} no longer matches its hash ({blob}); reject it")
        sample_id = f"contrib-{c.id:05d}-{c.content_sha256[:8]}"
        source = f"member-{c.member}"
        try:
            written = get_task(c.task).add_contribution(
                Path(raw_root) / c.task, sample_id, data, c.suffix, c.claimed_label, source, c.meta
            )
        except ValueError as exc:  # the raw data cannot take it (no dataset there, a clashing id)
            raise ReviewError(f"#{c.id} not accepted, nothing changed: {exc}") from exc
        self._decide(c.id, reviewer, "accepted", note, sample_id)
        return self.get(c.id), written

    def reject(self, contribution_id: int, reviewer: str, note: str) -> Contribution:
        if not note.strip():
            raise ReviewError("say why the contribution is rejected (--reason); the member sees it")
        c = self._pending(contribution_id)
        self._decide(c.id, reviewer, "rejected", note, None)
        return self.get(c.id)


def pending(task: str, settings: Any = None) -> list[dict[str, Any]]:
    """Pending contributions of ``task`` as plain dicts (for reports such as the data audit)."""
    from mlops.settings import Settings

    settings = settings or Settings()
    queue = ReviewQueue(settings.resolved_service_db_uri, settings.contributions_dir)
    return [asdict(c) for c in queue.list(task, "pending")]


def raw_root(root: Path = Path(".")) -> Path:
    """Where raw datasets live: the folder ``data.dvc`` tracks (so the path is written once)."""
    from mlops.data.versions import tracked_outs

    outs = [t for t in tracked_outs(root) if t.dvc_file.name == "data.dvc"]
    if not outs:
        raise ReviewError(f"no data.dvc tracks a folder in {root.resolve()}: review from the project root")
    return root / outs[0].path
