"""The outbox relay when its database connection breaks at the worst moment: after the
server has committed a numbering transaction but before the relay hears so. The rows it
numbered must still be published (no gap in the stream), not skipped for good."""

import re
import socket
import threading
import time

import helpers
from helpers import free_port, release_port, NET_PORTS


class CutAfterCommitProxy:
    """TCP proxy to PostgreSQL. Once armed, on the relay's connection (the one that LISTENs
    on intake_outbox) it forwards a COMMIT to the server and, if the answer carries
    numbered ticket events, drops that answer and closes the connection."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.port = free_port(NET_PORTS)
        self.armed = threading.Event()
        self.cuts = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(64)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.lsock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            state = {"relay": False, "commit_sent": False, "dead": False}
            threading.Thread(target=self._up, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, state), daemon=True).start()

    def _close(self, a, b, state):
        state["dead"] = True
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _up(self, client, server, state):
        try:
            while not state["dead"]:
                data = client.recv(65536)
                if not data:
                    break
                if b"intake_outbox" in data:
                    state["relay"] = True
                if state["relay"] and self.armed.is_set() and b"COMMIT" in data:
                    state["commit_sent"] = True
                server.sendall(data)
        except OSError:
            pass
        if not state["dead"]:
            self._close(client, server, state)

    def _down(self, server, client, state):
        try:
            while not state["dead"]:
                data = server.recv(65536)
                if not data:
                    break
                if state["commit_sent"] and self.armed.is_set():
                    if b"ticket.created" in data:
                        # committed on the server; the relay never hears it
                        self.armed.clear()
                        self.cuts += 1
                        self._close(server, client, state)
                        return
                    state["commit_sent"] = False  # an empty round: wait for one with rows
                client.sendall(data)
        except OSError:
            pass
        if not state["dead"]:
            self._close(server, client, state)

    def stop(self):
        self._stop = True
        self.lsock.close()
        release_port(self.port)


def test_relay_connection_cut_after_commit_loses_no_event(make_stack):
    stack = make_stack()
    pg_port = int(stack.pg.env["AC_PG_PORT"])
    proxy = CutAfterCommitProxy(pg_port)
    try:
        conninfo = re.sub(r"port=\d+", "port=%d" % proxy.port, stack.pg.env["AC_INTAKE_DB"])
        stack.intake.destroy()
        stack.intake = helpers.Intake(stack.log_dir, conninfo, stack.bus, stack.keys,
                                      name="intake-proxied")
        stack.intake.probe_token = stack.tokens["agent"]
        stack.intake.start()
        stack.intake.wait_ready()
        stack._apis = {}
        sub = stack.subscriber()
        agent = stack.api("agent")
        mark = sub.mark()

        proxy.armed.set()
        numbers = []
        for i in range(30):
            numbers.append(agent.new_ticket(stack.probe_customer["id"])["number"])
            time.sleep(0.01)
        helpers.wait_until(lambda: proxy.cuts == 1, 15, what="the relay's COMMIT to be cut")
        for i in range(10):  # and life goes on after the reconnection
            numbers.append(agent.new_ticket(stack.probe_customer["id"])["number"])

        sub.wait_subjects(numbers, timeout=30, since=mark)
        seqs = sorted({m.env.sequence for m in sub.messages(0) if m.env.source == "aftercare/intake"})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "gap in the stream: %s" % seqs
        state = stack.db.rows("SELECT last_seq, published_seq FROM intake.outbox_state")[0]
        assert state["last_seq"] == stack.db.scalar("SELECT count(*) FROM intake.outbox")
        assert "resending" in stack.intake.log_text()
    finally:
        proxy.stop()
