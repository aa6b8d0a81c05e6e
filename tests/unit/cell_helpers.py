"""Shared helpers for the cell's unit tests: one TCP conversation as parsed packets."""

from __future__ import annotations

from prism.flows.identity import TCP_ACK, PacketInfo, parse_frame
from prism.openflow.changes import MIRROR_MAC
from testkit.packets import build_tcp_frame

CLIENT = "10.0.0.1"
SERVER = "10.0.0.2"
CLIENT_PORT = 40000
SERVER_PORT = 80
CLIENT_ISN = 1000
SERVER_ISN = 5000


def info_of(frame: bytes) -> PacketInfo:
    """Parse a frame that must be a flow packet."""
    info = parse_frame(frame)
    assert isinstance(info, PacketInfo), info
    return info


class Conversation:
    """Builds the frames of one TCP connection, tracking both sides' next sequence numbers."""

    def __init__(self, client: str = CLIENT, server: str = SERVER, client_port: int = CLIENT_PORT,
                 server_port: int = SERVER_PORT, client_isn: int = CLIENT_ISN,
                 server_isn: int = SERVER_ISN) -> None:  # fmt: skip
        self.client, self.server = client, server
        self.client_port, self.server_port = client_port, server_port
        self.client_isn, self.server_isn = client_isn, server_isn
        self.client_next = (client_isn + 1) & 0xFFFFFFFF
        self.server_next = (server_isn + 1) & 0xFFFFFFFF

    def frame(self, from_client: bool, flags: int, payload: bytes = b"", seq: int = None,
              ack: int = None, mirror: bool = False, advance: bool = True) -> bytes:  # fmt: skip
        """A segment from one side; ``seq``/``ack`` default to the sides' next numbers."""
        if from_client:
            src, dst, sport, dport = self.client, self.server, self.client_port, self.server_port
            seq = self.client_next if seq is None else seq
            ack = self.server_next if ack is None else ack
        else:
            src, dst, sport, dport = self.server, self.client, self.server_port, self.client_port
            seq = self.server_next if seq is None else seq
            ack = self.client_next if ack is None else ack
        kwargs = {"eth_dst": MIRROR_MAC} if mirror else {}
        frame = build_tcp_frame(src, dst, sport, dport, payload, flags=flags, seq=seq, ack=ack,
                                **kwargs)  # fmt: skip
        if advance:
            used = len(payload) + (1 if flags & 0x01 else 0)  # FIN takes one sequence number
            if from_client:
                self.client_next = (seq + used) & 0xFFFFFFFF
            else:
                self.server_next = (seq + used) & 0xFFFFFFFF
        return frame

    def packet(self, from_client: bool, flags: int = TCP_ACK, payload: bytes = b"", **kwargs
               ) -> PacketInfo:  # fmt: skip
        """Like ``frame`` but parsed."""
        return info_of(self.frame(from_client, flags, payload, **kwargs))

    def syn(self, **kwargs) -> PacketInfo:
        """The client's SYN."""
        return self.packet(True, 0x02, seq=self.client_isn, ack=0, advance=False, **kwargs)

    def syn_ack(self, **kwargs) -> PacketInfo:
        """The server's SYN-ACK."""
        return self.packet(False, 0x12, seq=self.server_isn, advance=False, **kwargs)

    def handshake(self, **kwargs) -> list:
        """SYN, SYN-ACK, ACK."""
        return [self.syn(**kwargs), self.syn_ack(**kwargs), self.packet(True, TCP_ACK, **kwargs)]
