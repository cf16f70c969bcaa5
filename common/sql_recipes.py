"""The SQL of the recipe application's needs (migration 0008): descriptive metadata with its version,
attachments to the recipe backend's records, expiry of what nobody attached, and the change feed
(written by triggers in the transaction of every change; read here in (xid, id) order). Mixed into
`repository.py`'s `PgMediaRepository`, which holds the connections."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from common.database import Connect, translate_errors
from common.problems import AttachmentLimit
from common.records import (
    MEDIA_COLUMNS,
    Attachment,
    Change,
    Detail,
    MediaRecord,
    Processing,
    VariantRow,
    media_record,
)

CHANGE_TYPES = "com.recipes.media."  # the feed's events; the outbox also holds processing's own
_M_COLUMNS = ", ".join(f"m.{c.strip()}" for c in MEDIA_COLUMNS.split(","))


# `RecipeQueries.detail`: a record, its original's processing job with the job's variants, and its
# attachments, each aggregated into one JSON column by a lookup on an index.
_DETAIL = f"""
SELECT {MEDIA_COLUMNS},
  (SELECT json_build_array(j.state, j.reason, j.width, j.height, j.blurhash, j.dominant_color,
     (SELECT coalesce(json_agg(json_build_array(v.format, v.width, v.height, v.size, v.variant_sha256)
                               ORDER BY v.format, v.width), '[]')
        FROM image_variants v WHERE v.sha256 = j.sha256 AND v.recipe = j.recipe AND j.state = 'done'))
     FROM image_jobs j WHERE j.sha256 = media.sha256 AND j.recipe = %s) AS processing_row,
  (SELECT coalesce(json_agg(json_build_array(a.kind, a.ref, a.role, a.position) ORDER BY a.kind, a.ref), '[]')
     FROM attachments a WHERE a.media_id = media.id) AS attachment_rows
FROM media WHERE id = %s
"""  # noqa: S608 - column names only


def _ref_lock(kind: str, ref: str) -> str:
    return f"attach:{kind}:{ref}"


class RecipeQueries:
    _conn: Connect

    def update_metadata(
        self, media_id: uuid.UUID, expected_version: int | None, fields: dict[str, Any]
    ) -> MediaRecord | None:
        """Set `fields` (alt, caption, tags, filename) and bump the version, if the version is still
        `expected_version` (None: any); None when it is not (or the record is gone)."""
        allowed = ("alt", "caption", "tags", "filename")
        sets = [f"{name} = %({name})s" for name in allowed if name in fields]
        with translate_errors(), self._conn() as conn:
            row = conn.execute(
                f"UPDATE media SET {', '.join([*sets, 'version = version + 1'])},"  # noqa: S608 - fixed names
                " updated_at = clock_timestamp() WHERE id = %(id)s"
                " AND (%(expected)s::integer IS NULL OR version = %(expected)s::integer)"
                f" RETURNING {MEDIA_COLUMNS}",
                {
                    **{k: v for k, v in fields.items() if k in allowed},
                    "id": media_id,
                    "expected": expected_version,
                },
            ).fetchone()
        return media_record(row) if row else None

    def attach(
        self,
        attachment: Attachment,
        position_given: bool,
        max_per_media: int,
        max_per_ref: int,
    ) -> tuple[Attachment, bool]:
        """Attach (or update the role and position of) `attachment`; (what is stored, created?).
        Without a position it goes last. The item's and the reference's counts are checked under
        the item's row lock and the reference's advisory lock: AttachmentLimit past either."""
        a = attachment
        with translate_errors(), self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_ref_lock(a.kind, a.ref),))
            held = conn.execute("SELECT 1 FROM media WHERE id = %s FOR UPDATE", (a.media_id,)).fetchone()
            if held is None:
                raise LookupError(a.media_id)
            exists = conn.execute(
                "SELECT 1 FROM attachments WHERE media_id = %s AND kind = %s AND ref = %s",
                (a.media_id, a.kind, a.ref),
            ).fetchone()
            if exists is None:
                counts = conn.execute(
                    "SELECT (SELECT count(*) FROM attachments WHERE media_id = %s) AS item,"
                    " (SELECT count(*) FROM attachments WHERE kind = %s AND ref = %s) AS ref",
                    (a.media_id, a.kind, a.ref),
                ).fetchone()
                assert counts is not None
                if counts["item"] >= max_per_media:
                    raise AttachmentLimit("media", max_per_media)
                if counts["ref"] >= max_per_ref:
                    raise AttachmentLimit("reference", max_per_ref)
            row = conn.execute(
                "INSERT INTO attachments AS t (media_id, kind, ref, role, position) VALUES"
                " (%(media)s, %(kind)s, %(ref)s, %(role)s, COALESCE(%(position)s::integer,"
                " (SELECT coalesce(max(position) + 1, 0) FROM attachments"
                " WHERE kind = %(kind)s AND ref = %(ref)s)))"
                " ON CONFLICT (media_id, kind, ref) DO UPDATE SET role = EXCLUDED.role,"
                " position = CASE WHEN %(given)s THEN EXCLUDED.position ELSE t.position END"
                " WHERE (t.role, t.position) IS DISTINCT FROM (EXCLUDED.role,"
                " CASE WHEN %(given)s THEN EXCLUDED.position ELSE t.position END)"
                " RETURNING media_id, kind, ref, role, position",
                {
                    "media": a.media_id,
                    "kind": a.kind,
                    "ref": a.ref,
                    "role": a.role,
                    "position": a.position if position_given else None,
                    "given": position_given,
                },
            ).fetchone()
            if row is None:  # already so: nothing written, no event
                row = conn.execute(
                    "SELECT media_id, kind, ref, role, position FROM attachments"
                    " WHERE media_id = %s AND kind = %s AND ref = %s",
                    (a.media_id, a.kind, a.ref),
                ).fetchone()
            conn.execute(
                "UPDATE media SET unattached_expires_at = NULL"
                " WHERE id = %s AND unattached_expires_at IS NOT NULL",
                (a.media_id,),
            )
        assert row is not None
        return Attachment(**row), exists is None

    def detach(self, media_id: uuid.UUID, kind: str, ref: str, ttl_seconds: float) -> bool:
        """Remove the attachment; the item's expiry restarts if it asked for one and none is left."""
        with translate_errors(), self._conn() as conn, conn.transaction():
            # The record's row lock first, before any write: see `_lock_records`.
            self._lock_records(conn, "id = %s", (media_id,))
            gone = conn.execute(
                "DELETE FROM attachments WHERE media_id = %s AND kind = %s AND ref = %s RETURNING media_id",
                (media_id, kind, ref),
            ).fetchall()
            self._restart_expiry(conn, [media_id] if gone else [], ttl_seconds)
        return bool(gone)

    def detach_all(self, kind: str, ref: str, owner: str | None, ttl_seconds: float) -> int:
        """Everything attached to (kind, ref), or only `owner`'s items; how many were detached."""
        with translate_errors(), self._conn() as conn, conn.transaction():
            self._lock_records(
                conn,
                "id IN (SELECT media_id FROM attachments WHERE kind = %s AND ref = %s)"
                " AND (%s::text IS NULL OR owner = %s)",
                (kind, ref, owner, owner),
            )
            rows = conn.execute(
                "DELETE FROM attachments a WHERE kind = %s AND ref = %s AND (%s::text IS NULL"
                " OR EXISTS (SELECT 1 FROM media m WHERE m.id = a.media_id AND m.owner = %s))"
                " RETURNING media_id",
                (kind, ref, owner, owner),
            ).fetchall()
            self._restart_expiry(conn, [r["media_id"] for r in rows], ttl_seconds)
        return len(rows)

    @staticmethod
    def _lock_records(conn: Any, where: str, params: tuple[Any, ...]) -> None:
        """Row-lock the records a change of attachments writes an event for, as the transaction's
        first write. The change feed orders events by transaction id, which a transaction gets at
        its first write; taking the record's lock there orders this one with every other change to
        the record (patches, deletes, attaching, and the `processed` events of migration 0010,
        which lock the record too), so that the last event of a record carries its last state."""
        conn.execute(
            f"SELECT 1 FROM media WHERE {where} ORDER BY id FOR NO KEY UPDATE",  # noqa: S608 - constants
            params,
        )

    @staticmethod
    def _restart_expiry(conn: Any, media_ids: Sequence[uuid.UUID], ttl_seconds: float) -> None:
        if media_ids:
            conn.execute(
                "UPDATE media m SET unattached_expires_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = ANY(%s) AND expires_unattached"
                " AND NOT EXISTS (SELECT 1 FROM attachments a WHERE a.media_id = m.id)",
                (ttl_seconds, list(media_ids)),
            )

    def detail(self, media_id: uuid.UUID, recipe: int) -> Detail | None:
        """The record, its processing and its attachments in one statement (three index lookups
        by primary key), where separate queries made `GET /media/{id}` four round trips."""
        with self._conn() as conn:
            row = conn.execute(_DETAIL, (recipe, media_id)).fetchone()
        if row is None:
            return None
        job, attached = row.pop("processing_row"), row.pop("attachment_rows")
        processing = None
        if job is not None:
            state, reason, width, height, blurhash, color, variants = job
            made = tuple(VariantRow(f, w, h, size, sha) for f, w, h, size, sha in variants)
            processing = Processing(state, reason, width, height, blurhash, color, made)
        attachments = tuple(Attachment(media_id, k, ref, role, pos) for k, ref, role, pos in attached)
        return Detail(media_record(row), processing, attachments)

    def attachments_of(self, media_id: uuid.UUID) -> list[Attachment]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT media_id, kind, ref, role, position FROM attachments WHERE media_id = %s"
                " ORDER BY kind, ref",
                (media_id,),
            ).fetchall()
        return [Attachment(**r) for r in rows]

    def attached(
        self, kind: str, ref: str, owner: str | None, limit: int, after: tuple[int, uuid.UUID] | None
    ) -> list[tuple[MediaRecord, Attachment]]:
        """What is attached to (kind, ref) (only `owner`'s, unless None), in position order."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {_M_COLUMNS}, a.role AS a_role, a.position AS a_position"  # noqa: S608
                " FROM attachments a JOIN media m ON m.id = a.media_id"
                " WHERE a.kind = %(kind)s AND a.ref = %(ref)s"
                " AND (%(owner)s::text IS NULL OR m.owner = %(owner)s)"
                " AND (%(pos)s::integer IS NULL"
                " OR (a.position, a.media_id) > (%(pos)s::integer, %(after)s::uuid))"
                " ORDER BY a.position, a.media_id LIMIT %(limit)s",
                {
                    "kind": kind,
                    "ref": ref,
                    "owner": owner,
                    "pos": after[0] if after else None,
                    "after": after[1] if after else None,
                    "limit": limit,
                },
            ).fetchall()
        out = []
        for r in rows:
            role, position = r.pop("a_role"), r.pop("a_position")
            record = media_record(r)
            out.append((record, Attachment(record.id, kind, ref, role, position)))
        return out

    def expired_unattached(self, limit: int) -> list[MediaRecord]:
        """Up to `limit` items whose unattached expiry has passed (the maintenance deletes them)."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {MEDIA_COLUMNS} FROM media WHERE unattached_expires_at < clock_timestamp()"  # noqa: S608
                " ORDER BY unattached_expires_at LIMIT %s",
                (limit,),
            ).fetchall()
        return [media_record(r) for r in rows]

    def changes_after(self, after: tuple[int, int] | None, limit: int) -> list[Change]:
        """The feed from just after `after` ((xid, id); None: the start), of transactions older than
        every one still running, in (xid, id) order: nothing can appear later before what is read.
        Two statements, not one with `cursor IS NULL OR ...`: each is an index range scan."""
        where = "starts_with(type, %(prefix)s) AND xid < pg_snapshot_xmin(pg_current_snapshot())"
        if after is not None:
            where += " AND (xid, id) > (%(xid)s::text::xid8, %(id)s::bigint)"
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT xid::text::bigint AS xid, id, type, subject, data, created_at FROM outbox"  # noqa: S608
                f" WHERE {where} ORDER BY outbox.xid, outbox.id LIMIT %(limit)s",  # the index, not the casts
                {
                    "prefix": CHANGE_TYPES,
                    "xid": after[0] if after else None,
                    "id": after[1] if after else None,
                    "limit": limit,
                },
            ).fetchall()
        return [Change(**r) for r in rows]

    def changes_horizon(self) -> tuple[int, int] | None:
        """The last (xid, id) the retention purge deleted; a cursor before it lost events."""
        with self._conn() as conn:
            row = conn.execute("SELECT xid::text::bigint AS xid, id FROM outbox_horizon").fetchone()
        return (int(row["xid"]), int(row["id"])) if row else None

    def purge_changes(self, older_than_seconds: float, limit: int) -> int:
        """Delete up to `limit` feed events older than `older_than_seconds` (sent, or with nowhere
        to send them) and move the horizon past them."""
        with translate_errors(), self._conn() as conn, conn.transaction():
            row = conn.execute(
                "WITH gone AS (DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                " WHERE created_at < clock_timestamp() - make_interval(secs => %s) ORDER BY created_at"
                " LIMIT %s) RETURNING xid, id),"
                " last AS (SELECT xid, id FROM gone ORDER BY xid DESC, id DESC LIMIT 1),"
                " moved AS (INSERT INTO outbox_horizon (xid, id) SELECT xid, id FROM last"
                " ON CONFLICT (only_row) DO UPDATE SET (xid, id) = (EXCLUDED.xid, EXCLUDED.id)"
                " WHERE (outbox_horizon.xid, outbox_horizon.id) < (EXCLUDED.xid, EXCLUDED.id))"
                " SELECT count(*) AS n FROM gone",
                (older_than_seconds, limit),
            ).fetchone()
        return int(row["n"]) if row else 0

    def processing_of_many(self, digests: Sequence[str], recipe: int) -> dict[str, Processing]:
        """`processing_of` for a page of originals, in one round trip (the variants aggregated)."""
        if not digests:
            return {}
        with self._conn() as conn:
            jobs = conn.execute(
                "SELECT j.sha256, j.state, j.reason, j.width, j.height, j.blurhash, j.dominant_color,"
                " coalesce(json_agg(json_build_array(v.format, v.width, v.height, v.size, v.variant_sha256)"
                " ORDER BY v.format, v.width) FILTER (WHERE v.sha256 IS NOT NULL AND j.state = 'done'),"
                " '[]') AS variants FROM image_jobs j LEFT JOIN image_variants v"
                " ON v.sha256 = j.sha256 AND v.recipe = j.recipe"
                " WHERE j.sha256 = ANY(%s) AND j.recipe = %s GROUP BY j.sha256, j.recipe",
                (list(digests), recipe),
            ).fetchall()
        return {
            j["sha256"]: Processing(
                j["state"],
                j["reason"],
                j["width"],
                j["height"],
                j["blurhash"],
                j["dominant_color"],
                tuple(VariantRow(f, w, h, size, sha) for f, w, h, size, sha in j["variants"]),
            )
            for j in jobs
        }
