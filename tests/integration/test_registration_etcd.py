"""Registration against a real etcd (the session's EmbeddedEtcd): issue 11 §1, §4, §7.

Every wait is a condition with a deadline; the deadlines bound failures only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import etcd3
from helpers import host, subscribe, wait_until

from rx_discovery import (
    Credentials,
    Discovery,
    Host,
    Registration,
    RegistrationError,
    RegistrationStatus,
)
from rx_discovery.embedded import EmbeddedEtcd


def revision_now(raw: etcd3.Etcd3Client, prefix: str) -> int:
    """The store's revision after a marker write (everything before it is in the past)."""
    raw.put(f"{prefix}-marker", "m")
    return int(raw.get(f"{prefix}-marker")[1].mod_revision)


def host_puts_since(raw: etcd3.Etcd3Client, prefix: str, first: int) -> list[str]:
    """Keys under ``{prefix}/services/`` put from revision ``first`` until now (etcd's
    history, read up to an end marker written under the same prefix)."""
    end = f"{prefix}/services/zz-end/end"
    events, cancel = raw.watch_prefix(f"{prefix}/services/", start_revision=first)
    puts: list[str] = []
    done = threading.Event()

    def read() -> None:
        for event in events:
            key = event.key.decode()
            if key == end:
                break
            if isinstance(event, etcd3.events.PutEvent):
                puts.append(key)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    raw.put(end, "x")
    done.wait(20)
    cancel()
    raw.delete(end)
    assert done.is_set(), "the history was not read"
    return puts


# --- §1: a status observer that subscribes to the service's streams ---------------------------

def test_a_status_observer_subscribing_to_the_service_while_its_key_is_deleted(
        etcd: EmbeddedEtcd, raw: etcd3.Etcd3Client, unique_prefix: str) -> None:
    """Before: the observer ran under the registration's lock while the watch thread, holding
    the stream's locks, waited for that lock in the removal handling: close() never returned
    and the keepalive cohort stayed busy (every lease of that TTL stopped being refreshed).

    The observer deletes its own key, waits until the watch thread is delivering that
    deletion (a subscriber placed before the registration's own is told first), then
    subscribes to the service's hosts: under a library lock this dead-locks every time."""
    discovery = Discovery(etcd.endpoint, prefix=unique_prefix)
    delivering = threading.Event()
    discovery.subscribe_down("api").subscribe(lambda _uuid: delivering.set())
    rounds: list[int] = []

    registration = discovery.register("api", host(1), ttl=6)
    bystander = discovery.register("api", host(2), ttl=6).wait(30)  # same keepalive cohort

    def watch_my_peers(status: RegistrationStatus) -> None:
        if status is not RegistrationStatus.REGISTERED or len(rounds) >= 3:
            return
        rounds.append(1)
        delivering.clear()
        raw.delete(registration.key)
        delivering.wait(10)
        discovery.hosts("api").subscribe(lambda _hosts: None).dispose()

    registration.status.subscribe(watch_my_peers)
    wait_until(lambda: len(rounds) == 3 and registration.ready
               and raw.get(registration.key)[0] is not None, timeout=60,
               message="three deletions healed")
    # the cohort still refreshes the bystander: its lease's TTL goes up again
    lease = raw.get(bystander.key)[1].lease_id
    last = [raw.get_lease_info(lease).TTL]

    def refreshed() -> bool:
        ttl = raw.get_lease_info(lease).TTL
        went_up, last[0] = ttl > last[0], ttl
        return went_up

    wait_until(refreshed, timeout=20, message="a refresh of the bystander's lease")
    closer = threading.Thread(target=discovery.close, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() dead-locked"
    assert raw.get(bystander.key)[0] is None and raw.get(registration.key)[0] is None


# --- §4: dispose() and close() mean it ---------------------------------------------------------

def test_a_registration_disposed_while_its_first_write_is_in_flight_never_appears_after(
        etcd: EmbeddedEtcd, raw: etcd3.Etcd3Client, unique_prefix: str) -> None:
    discovery = Discovery(etcd.endpoint, prefix=unique_prefix)
    try:
        for n in range(10):
            registration = discovery.register("api", host(n), ttl=5)
            registration.dispose()
        after = revision_now(raw, unique_prefix)
        discovery.close()  # waits for every write in flight: nothing more is written
        late = host_puts_since(raw, unique_prefix, after + 1)
        assert late == [], f"keys written after dispose() returned: {late}"
        assert list(raw.get_prefix(f"{unique_prefix}/services/api/")) == []
    finally:
        discovery.close()


def test_close_disposes_registrations_whose_first_write_is_in_flight(
        etcd: EmbeddedEtcd, raw: etcd3.Etcd3Client, unique_prefix: str) -> None:
    """close() as the first host key lands: the others are between their grant and put."""
    first_put = threading.Event()
    events, cancel = raw.watch_prefix(f"{unique_prefix}/services/api/")
    threading.Thread(target=lambda: (next(iter(events)), first_put.set()), daemon=True).start()
    discovery = Discovery(etcd.endpoint, prefix=unique_prefix)
    for n in range(5):
        discovery.register("api", host(n), ttl=30)
    assert first_put.wait(20)
    discovery.close()
    cancel()
    after = revision_now(raw, unique_prefix)
    left = [m.key.decode() for _, m in raw.get_prefix(f"{unique_prefix}/services/api/")]
    assert left == [], f"left registered after close(): {left}"
    assert host_puts_since(raw, unique_prefix, after + 1) == []


def test_a_deleted_service_key_is_rewritten(
        etcd: EmbeddedEtcd, raw: etcd3.Etcd3Client,
        unique_prefix: str) -> None:
    with Discovery(etcd.endpoint, prefix=unique_prefix) as discovery:
        registration = discovery.register("api", host(1), ttl=5).wait(10)
        service_key = f"{unique_prefix}/services_infos/api"
        assert raw.get(service_key)[0] is not None
        raw.delete(service_key)
        wait_until(lambda: raw.get(service_key)[0] is not None, timeout=10,
                   message="the service key written again")
        assert registration.ready


# --- §7: credential sync the Go way, across processes --------------------------------------------

NEWCOMER = textwrap.dedent("""
    import sys
    from rx_discovery import Discovery, Host
    d = Discovery(sys.argv[1], prefix=sys.argv[2])
    host = Host(hostname="db.test", ports={"pg": "5432"}, public=True, user="u2",
                password="p2", private_hostname="node-2")
    registration = d.register("db", host, ttl=5).wait(15)
    print(registration.key, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    d.close()
""")


def test_a_newcomer_in_another_process_writes_its_credentials_and_the_others_adopt_them(
        etcd: EmbeddedEtcd, raw: etcd3.Etcd3Client, unique_prefix: str) -> None:
    for trial in range(3):
        prefix = f"{unique_prefix}-{trial}"
        with Discovery(etcd.endpoint, prefix=prefix) as discovery:
            old = discovery.register("db", Host(
                hostname="db.test", ports={"pg": "5432"}, public=True, user="u1",
                password="p1", private_hostname="node-1"), ttl=5).wait(15)
            adopted = subscribe(old.credentials)
            newcomer = subprocess.Popen(
                [sys.executable, "-c", NEWCOMER, etcd.endpoint, prefix],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                new_key = newcomer.stdout.readline().strip()  # type: ignore[union-attr]
                assert new_key, "the newcomer did not register"

                def stored(key: str) -> Credentials:
                    return Host.from_json(raw.get(key)[0]).credentials

                def adopted_everywhere(old: Registration = old) -> bool:
                    return (old.host.credentials == Credentials("u2", "p2")
                            and stored(old.key) == Credentials("u2", "p2"))

                wait_until(adopted_everywhere, timeout=15,
                           message="the registered host adopts the newcomer's credentials")
                assert stored(new_key) == Credentials("u2", "p2")
                assert discovery.get("db").service().credentials == Credentials("u2", "p2")
                # reg.credentials emits on a delivery thread, after the host key's rewrite
                wait_until(lambda adopted=adopted: len(adopted.items) >= 2, timeout=15,
                           message="reg.credentials emits the adopted credentials")
                assert adopted.items == [Credentials("u1", "p1"), Credentials("u2", "p2")]
            finally:
                newcomer.communicate("", timeout=30)


def test_status_observers_that_block_do_not_stop_the_keepalives_of_other_registrations(
        etcd: EmbeddedEtcd, raw: etcd3.Etcd3Client, unique_prefix: str) -> None:
    """Each of 10 registrations has a status observer that blocks once REGISTERED ("wait
    until my peers are up"). Before: each took one of the Discovery's 8 I/O threads for as
    long as it blocked, and the keepalive batches (run on the same threads) stopped: every
    lease of the process expired, the bystander's too."""
    discovery = Discovery(etcd.endpoint, prefix=unique_prefix)
    release = threading.Event()
    blocked: list[str] = []
    try:
        bystander = discovery.register("api", host(0), ttl=6).wait(10)
        lease = raw.get(bystander.key)[1].lease_id

        def block_once_registered(status: RegistrationStatus) -> None:
            if (status is RegistrationStatus.REGISTERED
                    and threading.current_thread() is not threading.main_thread()):
                blocked.append(threading.current_thread().name)
                release.wait(60)

        for n in range(1, 11):
            discovery.register("api", host(n), ttl=6).status.subscribe(block_once_registered)
        wait_until(lambda: len(blocked) >= 8, timeout=20, message="the observers block")
        last = [raw.get_lease_info(lease).TTL]
        rises: list[int] = []

        def refreshed_again() -> bool:  # the lease's TTL goes up at each refresh (every 2 s)
            ttl = raw.get_lease_info(lease).TTL
            if ttl > last[0]:
                rises.append(ttl)
            last[0] = ttl
            return len(rises) >= 3

        wait_until(refreshed_again, timeout=30, interval=0.1,
                   message="the bystander's lease is still refreshed")
        assert raw.get(bystander.key)[0] is not None
    finally:
        release.set()
        discovery.close()



def test_status_observers_that_wait_for_their_peers_do_not_starve_the_registrations(
        etcd: EmbeddedEtcd, unique_prefix: str) -> None:
    """Twelve registrations whose status observer, once REGISTERED, waits for every peer
    ("start serving once the whole set is up"); the last four are made once the first eight
    observers wait. Before: the observers ran on the Discovery's 8 I/O threads and blocked
    them all, so the last four registrations' work, queued behind, never ran: every wait
    ended in its timeout (without one, the process hung for good)."""
    discovery = Discovery(etcd.endpoint, prefix=unique_prefix)
    registrations: list[Registration] = []
    everyone = threading.Event()
    waiting: list[int] = []
    outcomes: list[str] = []

    def wait_for_my_peers(status: RegistrationStatus) -> None:
        if (status is RegistrationStatus.REGISTERED
                and threading.current_thread() is not threading.main_thread()):
            waiting.append(1)
            try:
                assert everyone.wait(30)
                for peer in registrations:
                    peer.wait(15)
                outcomes.append("all up")
            except RegistrationError as error:
                outcomes.append(str(error))

    def register(n: int) -> None:
        registration = discovery.register("api", host(n), ttl=5)
        registrations.append(registration)
        registration.status.subscribe(wait_for_my_peers)

    try:
        for n in range(8):
            register(n)
        wait_until(lambda: len(waiting) == 8, timeout=20, message="eight observers wait")
        for n in range(8, 12):
            register(n)
        everyone.set()
        wait_until(lambda: len(outcomes) == 12, timeout=40, message="every observer is done")
        assert outcomes == ["all up"] * 12
    finally:
        everyone.set()
        discovery.close()
