"""Hub.resync: a replica reloaded after an outage, and what local members are told."""

from __future__ import annotations

from cpc_signaling.core import DocumentState, Hub, Joined, Relayed

from ..helpers import new_id

CURSOR = b'{"CursorUpdate":{}}'
STATUS = b'{"PresenceStatus":{}}'


def test_resync_announces_what_changed_and_nothing_else() -> None:
    hub: Hub[str] = Hub(instance_id="me", retain_idle=False)
    doc = new_id()
    local, stays, goes, comes = new_id(), new_id(), new_id(), new_id()
    conn = hub.connect("peer-local", user_id=local)
    conn.joined.add(doc)
    hub.local_refs[doc] = 1
    for event in (
        Joined(conn.id, local),
        Joined("other/1", stays),
        Joined("other/2", goes),
        Relayed("other/1", stays, "CursorUpdate", CURSOR),
    ):
        hub.apply(doc, event)

    fresh = DocumentState(doc, seq=40)
    fresh.restore_user(local, [conn.id], [])
    fresh.restore_user(stays, ["other/1"], [("CursorUpdate", CURSOR), ("PresenceStatus", STATUS)])
    fresh.restore_user(comes, ["other/3"], [("PresenceStatus", STATUS)])
    sends = hub.resync(fresh)

    told = [(list(s.peers), list(s.frames)) for s in sends]
    assert told == [
        (["peer-local"], [fresh.leave_frame(goes)]),
        (["peer-local"], [STATUS]),  # stays: only what is new
        (["peer-local"], [fresh.join_frame(comes), STATUS]),
    ]
    assert hub.documents[doc] is fresh
    assert hub.present_users(doc) == [local, stays, comes]


def test_resync_of_an_unchanged_replica_sends_nothing() -> None:
    hub: Hub[str] = Hub(instance_id="me", retain_idle=False)
    doc, user, other = new_id(), new_id(), new_id()
    conn = hub.connect("peer", user_id=user)
    conn.joined.add(doc)
    hub.local_refs[doc] = 1
    hub.apply(doc, Joined(conn.id, user))
    hub.apply(doc, Joined("x/1", other))
    hub.apply(doc, Relayed("x/1", other, "CursorUpdate", CURSOR))
    fresh = DocumentState(doc, seq=3)
    fresh.restore_user(user, [conn.id], [])
    fresh.restore_user(other, ["x/1"], [("CursorUpdate", CURSOR)])
    assert hub.resync(fresh) == []


def test_resync_sends_local_members_the_stored_messages_they_were_not_sent() -> None:
    hub: Hub[str] = Hub(instance_id="me", retain_idle=False)
    doc, user = new_id(), new_id()
    conn = hub.connect("peer", user_id=user)
    conn.joined.add(doc)
    hub.local_refs[doc] = 1
    hub.apply(doc, Joined(conn.id, user))
    hub.apply(doc, Relayed(conn.id, user, "Comment", b"old"))
    hub.apply(doc, Relayed(conn.id, user, "Comment", b"mine, while away"))
    fresh = DocumentState(doc, seq=9)
    fresh.restore_user(user, [conn.id], [])
    fresh.stored.extend([b"old", b"theirs", b"mine, while away"])
    told = [(list(s.peers), list(s.frames)) for s in hub.resync(fresh)]
    assert told == [(["peer"], [b"theirs"])]
