#!/usr/bin/env python3
"""A dpop-agent client in Python with the standard library only (docs/protocol.md).

Usage: DPOP_AUTH_SOCK=/path/to/agent.sock python3 dpop_agent_client.py KEY METHOD URL

Prints a DPoP proof for METHOD URL signed by KEY (generated first when the agent has no key
of that name), or the agent's error code and message on standard error (exit status 1).
"""
import json
import os
import socket
import sys


class AgentError(Exception):
    """A failed reply: {"ok": false, "error": {"code": ..., "message": ...}}."""

    def __init__(self, code, message):
        super().__init__(f"{message} ({code})")
        self.code = code


class Agent:
    def __init__(self, path=None):
        path = path or os.environ.get("DPOP_AUTH_SOCK") or os.path.join(
            os.environ.get("XDG_RUNTIME_DIR", ""), "dpop-agent", "agent.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.next_id = 1

    def call(self, op, **fields):
        request = {"id": self.next_id, "op": op, **fields}
        self.next_id += 1
        self.file.write(json.dumps(request).encode() + b"\n")
        self.file.flush()
        line = self.file.readline()
        if not line:
            raise AgentError("closed", "the agent closed the connection")
        reply = json.loads(line)
        if not reply.get("ok"):
            error = reply.get("error", {})
            raise AgentError(error.get("code", "unknown"), error.get("message", ""))
        if reply.get("id") != request["id"]:
            raise AgentError("protocol", "reply id does not match the request")
        return reply


def main():
    key, method, url = sys.argv[1:4]
    agent = Agent()
    try:
        if key not in [k["label"] for k in agent.call("list_keys")["keys"]]:
            agent.call("generate_key", label=key)
        print(agent.call("sign_proof", key=key, htm=method, htu=url)["proof"])
    except AgentError as e:
        print(f"dpop-agent refused: {e.code}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
