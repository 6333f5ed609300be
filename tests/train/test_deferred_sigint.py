"""Ctrl-C inside an optimizer update is delivered after it: a checkpoint never holds half an update."""

import os
import signal
import threading

import pytest

from lumina2_train.train.hooks import deferred_sigint


def test_ctrl_c_inside_the_block_is_raised_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)  # delivered to this (main) thread at once
            done.append("rest of the update")
    assert done == ["rest of the update"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_an_exception_inside_wins_and_the_handler_is_restored():
    with pytest.raises(ValueError):
        with deferred_sigint():
            raise ValueError("non-finite loss")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_other_threads_run_the_block_as_is():
    seen = []

    def work():
        with deferred_sigint():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]
