"""``tracker migrate``'s broker half (SPEC §14): an older, classic dead-letter queue becomes a
quorum queue of the same name, with every message it holds.

RabbitMQ cannot change a queue's type, so the messages go round a quorum queue of the move's
own, ``<dead queue>.moving``:

1. park: ``.moving`` is declared and bound to the dead-letter exchange, then the classic queue
   is unbound from it (dead letters published from then on go to ``.moving``); every message of
   the classic queue is moved to ``.moving``, and the classic queue is deleted once empty;
2. return: the dead queue is declared again, a quorum queue bound to the dead-letter exchange,
   then ``.moving`` is unbound; every message of ``.moving`` is moved into it, and ``.moving``
   is deleted once empty.

Messages are moved as ``tracker dead replay`` moves one, a batch at a time: taken without an
ack, published with routing key, body and properties (headers included) through a fanout
exchange of the move's own (``<dead queue>.moving``, bound to the target alone, so the routing
key is kept), and only once RabbitMQ has taken responsibility for the copies (a transaction's
commit, which it answers as it answers confirms) are the originals acked (removed), in a second
commit. Killed between the two, that batch is found in both queues by the next run: kept twice,
never lost. (Waiting for a confirm for each message in turn was several times slower:
docs/reliability.md.)

What the broker holds says which step comes next (``next_step``), so a run stopped anywhere (a
crash, Ctrl-C, a lost node) is finished by the next, and a run with nothing to move changes
nothing. Consumers may run meanwhile: at every instant at least one queue is bound to the
dead-letter exchange, so no dead letter is refused. A consumer that declares its topology
meanwhile finds the classic queue and leaves it as it is (``tracker.broker.declare_topology``),
or finds none and declares the quorum queue, which step 2 then takes as its own. A dead letter
published in the instant between a bind and the unbind after it goes to both queues, and is
kept twice.

One user of the dead queue at a time: the move holds ``tracker.cli.deadletters.exclusive_use``,
as the ``tracker dead`` commands do, so that no command holds messages the move would delete
with the classic queue, and two moves never run at once.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import sys

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from tracker import broker
from tracker.cli.deadletters import exclusive_use
from tracker.config import Settings
from tracker.errors import BrokerUnreachable, DeadLettersUnavailable

log = logging.getLogger(__name__)

MOVING_SUFFIX = ".moving"
BATCH = 100  # messages moved a commit: at most this many are kept twice by a run stopped mid-batch
# A classic queue declared again under the name at every round means a consumer of an older
# tracker still runs: stop rather than go round for ever.
_MAX_ROUNDS = 5


class Kind(enum.Enum):
    """What holds the dead queue's name on the broker."""

    ABSENT = "no queue"
    CLASSIC = "a classic queue"
    QUORUM = "a quorum queue"


class Step(enum.Enum):
    PARK = "park"  # move the classic queue's messages to .moving, then delete it
    RETURN = "return"  # declare the quorum queue, move .moving's messages into it, then delete .moving
    DONE = "done"


@dataclasses.dataclass(frozen=True)
class Found:
    """What the broker holds now: the dead queue's kind, and whether ``.moving`` exists."""

    dead: Kind
    parked: bool


def next_step(found: Found) -> Step:
    """The step that takes the move on from ``found`` (each run starts from what it finds)."""
    if found.dead is Kind.CLASSIC:
        return Step.PARK
    if found.parked:
        return Step.RETURN
    return Step.DONE


@dataclasses.dataclass(frozen=True)
class Moved:
    """A run's account: what it found, and the messages before and after."""

    queue: str
    found: Found  # when the run began
    before: int  # in the dead queue and .moving when the run began
    after: int  # in the dead queue when it ended

    def summary(self) -> str:
        """One line for ``tracker migrate``."""
        counts = f"{self.before} messages before, {self.after} after"
        if self.found.dead is Kind.CLASSIC:
            return f"dead-letter queue {self.queue}: moved from a classic queue into a quorum queue; {counts}"
        if self.found.parked:
            return (
                f"dead-letter queue {self.queue}: finished the move an earlier run began, into a quorum queue; {counts}"
            )
        if self.found.dead is Kind.ABSENT:
            return f"dead-letter queue {self.queue}: not declared yet (the consumers declare it, a quorum queue)"
        return f"dead-letter queue {self.queue}: a quorum queue, {self.after} messages"


def move_to_quorum(settings: Settings, *, wait_s: float = 600.0) -> Moved:
    """Make ``settings.dead_queue`` a quorum queue, moving the messages of a classic one into it.

    Raises BrokerUnreachable when no node answers (nothing was touched), and
    DeadLettersUnavailable when the broker refuses or is lost part-way, or another user of the
    dead queue holds it for longer than ``wait_s``: running it again carries on.
    """
    link = broker.ConfirmingChannel(settings, "tracker-migrate")
    try:
        # BrokerUnreachable (no AMQPError) passes as it is.
        with exclusive_use(channel := link.open(), settings, wait_s):
            return _move(channel, settings)
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise DeadLettersUnavailable(f"RabbitMQ refused: {exc.reply_text}") from None
    except pika.exceptions.UnroutableError:
        raise DeadLettersUnavailable("a queue was deleted under the move, by someone else") from None
    except pika.exceptions.NackError:
        raise DeadLettersUnavailable("RabbitMQ refused a moved message (nack)") from None
    except pika.exceptions.AMQPError as exc:
        raise DeadLettersUnavailable(f"lost RabbitMQ: {type(exc).__name__} {exc}".strip()) from None
    finally:
        link.close()


def migrate_dead_queue(settings: Settings) -> int:
    """``tracker migrate``'s call: the move, its counts printed; the exit status.

    No node answering is no failure of the migration (nothing can have been half done): it is
    logged, and ``tracker migrate`` run again once RabbitMQ answers finishes the job. A move
    stopped part-way is (1): the dead letters then wait in ``.moving``, unseen by ``tracker dead``.
    """
    try:
        moved = move_to_quorum(settings)
    except BrokerUnreachable as exc:
        log.warning(
            "dead-letter queue %s not checked: cannot reach RabbitMQ (%s); if an older tracker declared it "
            "as a classic queue, run `tracker migrate` again once RabbitMQ answers",
            settings.dead_queue,
            exc,
        )
        return 0
    except DeadLettersUnavailable as exc:
        print(
            f"tracker: moving the dead-letter queue {settings.dead_queue} into a quorum queue stopped: {exc}; "
            "nothing is lost: run `tracker migrate` again to finish it",
            file=sys.stderr,
        )
        return 1
    print(moved.summary())
    return 0


def _move(channel: BlockingChannel, settings: Settings) -> Moved:
    """The steps, each chosen by what the broker holds, until there is none left."""
    connection = channel.connection
    dead, moving = settings.dead_queue, settings.dead_queue + MOVING_SUFFIX
    first = found = _look(connection, settings)
    before = (_count(connection, dead) or 0) + (_count(connection, moving) or 0)
    if next_step(found) is not Step.DONE:
        channel.exchange_declare(settings.dead_exchange, exchange_type="fanout", durable=True)
    for _ in range(_MAX_ROUNDS):
        step = next_step(found)
        if step is Step.DONE:
            channel.exchange_delete(moving)  # the moves' exchange
            return Moved(dead, first, before, _count(connection, dead) or 0)
        if step is Step.PARK:
            _declare_quorum(channel, moving, settings.dead_exchange)
            channel.queue_unbind(dead, settings.dead_exchange)
            _move_all(connection, dead, moving, via=moving)
            _delete_if_empty(connection, dead, classic=True)
        else:
            _declare_quorum(channel, dead, settings.dead_exchange)
            channel.queue_unbind(moving, settings.dead_exchange)
            _move_all(connection, moving, dead, via=moving)
            _delete_if_empty(connection, moving, classic=False)
        found = _look(connection, settings)
    raise DeadLettersUnavailable(
        f"{dead} is still {found.dead.value} after {_MAX_ROUNDS} rounds: is a consumer of an older tracker "
        "still running (it declares a classic queue again)?"
    )


def _look(connection: pika.BlockingConnection, settings: Settings) -> Found:
    """The dead queue's kind and whether ``.moving`` exists, each asked on a channel of its own."""
    parked = _count(connection, settings.dead_queue + MOVING_SUFFIX) is not None
    if _count(connection, settings.dead_queue) is None:
        return Found(Kind.ABSENT, parked)
    probe = connection.channel()
    try:
        probe.queue_declare(settings.dead_queue, durable=True, arguments=broker.DEAD_QUEUE_ARGUMENTS)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if broker.still_classic(exc):
            return Found(Kind.CLASSIC, parked)
        raise
    probe.close()
    return Found(Kind.QUORUM, parked)


def _count(connection: pika.BlockingConnection, queue: str) -> int | None:
    """Messages ready in ``queue``; None when it does not exist."""
    channel = connection.channel()
    try:
        count = broker.count_messages(channel, queue)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if broker.home_node_down(exc):
            raise DeadLettersUnavailable(
                f"{queue} is a classic queue on a node that is down; start that node, then run it again"
            ) from None
        raise
    if channel.is_open:
        channel.close()
    return count


def _declare_quorum(channel: BlockingChannel, queue: str, exchange: str) -> None:
    """Declare ``queue`` as the dead queue is declared, and bind it to the dead-letter exchange."""
    channel.queue_declare(queue, durable=True, arguments=broker.DEAD_QUEUE_ARGUMENTS)
    channel.queue_bind(queue, exchange)


def _move_all(connection: pika.BlockingConnection, source: str, target: str, *, via: str) -> int:
    """Move every message of ``source`` to ``target``, in batches of ``BATCH``; how many (logged).

    Through ``via``, a fanout exchange bound to ``target`` alone: a message keeps its routing key
    (RabbitMQ's own dead letters have nothing else saying where they were going). In a
    transaction, two commits a batch: the copies, which RabbitMQ answers only once it has taken
    responsibility for every one of them (as a confirm says), then the acks of the originals.
    A copy returned as unroutable (``target`` deleted meanwhile) stops it before any ack.

    It ends on a ``basic.get`` that finds ``source`` empty after the last acks, never on the acks:
    a quorum queue settles acks after their commit is answered, and a channel closed before its
    settles are applied has its messages returned to the queue, to be moved a second time. The
    queue handles one channel's commands in order, so the get is answered after the settles.

    On a channel of its own, closed after: RabbitMQ (3.10) fails a channel that publishes to a
    quorum queue after it has used a classic queue of the same name (INTERNAL_ERROR).
    """
    channel = connection.channel()
    returned: list[str] = []
    channel.add_on_return_callback(lambda _channel, method, _properties, _body: returned.append(method.reply_text))
    channel.exchange_delete(via)  # with whatever an earlier leg bound to it
    channel.exchange_declare(via, exchange_type="fanout", durable=True)
    channel.queue_bind(target, via)
    channel.tx_select()
    moved = 0
    while True:
        last = None
        taken = 0
        while taken < BATCH and (got := channel.basic_get(source, auto_ack=False))[0] is not None:
            method, properties, body = got
            channel.basic_publish(via, method.routing_key, body, properties, mandatory=True)
            last = method.delivery_tag
            taken += 1
        if last is not None:
            channel.tx_commit()
            if returned:
                raise DeadLettersUnavailable(f"{target} took no copy ({returned[0]}): was it deleted meanwhile?")
            channel.basic_ack(last, multiple=True)
            channel.tx_commit()
            moved += taken
        if taken == 0:
            channel.close()
            log.info("moved %d messages from %s to %s", moved, source, target)
            return moved


def _delete_if_empty(connection: pika.BlockingConnection, queue: str, *, classic: bool) -> None:
    """Delete ``queue`` unless a message is in it (the next round moves it).

    The queue is unbound and no other command holds its messages (``exclusive_use``), so nothing
    arrives between the count and the delete: a message routed to it before its unbind reaches
    it long before the leg that emptied it ends. A classic queue is deleted only if empty,
    besides; a quorum queue cannot be (RabbitMQ refuses ``if-empty`` for one).
    """
    if _count(connection, queue):
        return
    channel = connection.channel()
    try:
        channel.queue_delete(queue, if_empty=classic)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 406:  # PRECONDITION_FAILED: not empty
            raise
        return
    channel.close()
