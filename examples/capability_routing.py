"""Capability routing: find an agent by what it can do, then send the task to its mailbox.

Two specialist agents register themselves with a description of their skills.  An orchestrator
does not know their names: it asks the registry for "an agent that can translate ..." (semantic
search) and sends the task to ``agents[0]["mailbox"]``.  The chosen agent picks the task up.

Run:  python examples/capability_routing.py [nats://127.0.0.1:4222]   (or set MQ9FAST_SERVER)
"""
import asyncio
import os
import secrets
import sys

from mq9fast import Mq9Client


async def main(server: str) -> int:
    run = secrets.token_hex(3)  # keeps repeated runs against one broker apart
    specialists = {
        f"translator.{run}": "Translates documents between English, French, German and Chinese.",
        f"summarizer.{run}": "Summarizes long reports and meeting notes into short bullet points.",
    }
    async with Mq9Client(server) as client:
        # 1. each specialist creates its inbox and registers a card that points to it
        for name, skills in specialists.items():
            inbox = await client.mailbox_create(name=f"{name}.inbox", ttl=600)
            await client.agent_register({"name": name, "mailbox": inbox, "payload": skills})
            print(f"registered {name} -> {inbox}")

        # 2. the orchestrator routes by intent
        intent = "translate this contract from English into French"
        agents = await client.agent_discover(semantic=intent, limit=5)
        mine = [a for a in agents if a["name"] in specialists]   # ignore other users' agents
        chosen = mine[0]
        print(f"intent {intent!r} -> {chosen['name']} (mailbox {chosen['mailbox']})")
        msg_id = await client.send(chosen["mailbox"], {"task": "translate", "doc": "contract-42", "to": "fr"})
        print(f"task sent, msg_id {msg_id}")

        # 3. the chosen agent finds the task in its inbox
        tasks = await client.fetch(chosen["mailbox"], group_name="worker", deliver="earliest", max_wait_ms=2000)
        for t in tasks:
            print(f"{chosen['name']} received: {t.json()}")
            await client.ack(chosen["mailbox"], "worker", t.msg_id)

        for name in specialists:
            await client.agent_unregister(name)
        ok = chosen["name"].startswith("translator.") and len(tasks) == 1
        print("OK" if ok else "FAILED: the task went to the wrong agent")
        return 0 if ok else 1


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MQ9FAST_SERVER", "nats://127.0.0.1:4222")
    sys.exit(asyncio.run(main(url)))
