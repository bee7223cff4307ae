"""A real SMTP server on loopback for the email receiver's test.

Runs aiosmtpd on 127.0.0.1, prints "listening <port>", then one JSON line per
message received, parsed with the standard library's email parser (subject,
from, to, date, message id, plain-text body). Stops when stdin closes.
"""

import email
import json
import socket
import sys
from email import policy

from aiosmtpd.controller import Controller


class Sink:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        body = message.get_body(preferencelist=("plain", "html"))
        print(
            json.dumps(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": envelope.rcpt_tos,
                    "subject": str(message["subject"]),
                    "from": str(message["from"]),
                    "to": str(message["to"]),
                    "date": str(message["date"]),
                    "message_id": str(message["message-id"]),
                    "body": body.get_content() if body is not None else "",
                }
            ),
            flush=True,
        )
        return "250 Message accepted for delivery"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"listening {port}", flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
