"""A recording stand-in for an asyncio transport, for driving the downstream protocol with
bytes directly (property tests and the atheris harness)."""


class FakeTransport:
    def __init__(self):
        self.out = bytearray()
        self.closed = False

    def write(self, data):
        self.out.extend(data)

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass
