"""Human in the loop: an agent asks a person for approval and waits for the answer.

The agent sends an URGENT approval request to the human's mailbox with a ``reply_to`` address.
The human's side (here a ``consume`` loop standing in for a UI) handles each request and answers
on ``reply_to``; the agent picks the decision up from its reply mailbox.

Run:  python examples/human_approval.py [nats://127.0.0.1:4222]
"""
import asyncio
import os
import sys

from mq9fast import Message, Mq9Client, Priority


async def main(server: str) -> int:
    async with Mq9Client(server) as human, Mq9Client(server) as agent:
        human_inbox = await human.mailbox_create(ttl=3600)

        # The human's client: answer every approval request on its reply_to mailbox.
        async def on_request(msg: Message) -> None:
            req = msg.json()
            decision = "approved" if req["amount"] <= 1000 else "rejected"
            print(f"human: {req['action']} {req['amount']} EUR ({msg.priority.value}) -> {decision}")
            await human.send(req["reply_to"], {"request_id": req["request_id"], "decision": decision},
                             priority=Priority.URGENT)

        consumer = await human.consume(human_inbox, on_request, group_name="human", deliver="earliest",
                                       max_wait_ms=200)

        # The agent asks and waits for the decision.
        reply_box = await agent.mailbox_create(ttl=600)
        await agent.send(human_inbox, {"request_id": "r-7", "action": "refund", "amount": 420,
                                       "reply_to": reply_box}, priority=Priority.URGENT)
        print("agent: approval requested, waiting ...")
        answers = await agent.fetch(reply_box, deliver="earliest", max_wait_ms=5000)
        await consumer.stop()

        for a in answers:
            print(f"agent: decision {a.json()}")
        ok = len(answers) == 1 and answers[0].json()["decision"] == "approved" and consumer.processed_count == 1
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MQ9FAST_SERVER", "nats://127.0.0.1:4222")
    sys.exit(asyncio.run(main(url)))
