//! A shard-local shutdown signal that any number of tasks can await.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    fired: bool,
    /// One slot per live waiter; freed when the waiter is dropped, so
    /// connections that come and go leave nothing behind.
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// Fired once when the shard starts shutting down.
#[derive(Clone, Default)]
pub struct ShutdownSignal {
    state: Rc<RefCell<State>>,
}

impl ShutdownSignal {
    pub fn fire(&self) {
        let wakers: Vec<Waker> = {
            let mut s = self.state.borrow_mut();
            s.fired = true;
            s.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.state.borrow().fired
    }

    /// A future that completes when the signal fires. Create it once per
    /// task and poll it by reference in a loop.
    pub fn wait(&self) -> Wait {
        Wait {
            state: self.state.clone(),
            slot: None,
        }
    }
}

/// See [`ShutdownSignal::wait`].
pub struct Wait {
    state: Rc<RefCell<State>>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut s = this.state.borrow_mut();
        if s.fired {
            return Poll::Ready(());
        }
        match this.slot {
            Some(i) => {
                if !s.wakers[i].as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.wakers[i] = Some(cx.waker().clone());
                }
            }
            None => {
                let i = match s.free.pop() {
                    Some(i) => i,
                    None => {
                        s.wakers.push(None);
                        s.wakers.len() - 1
                    }
                };
                s.wakers[i] = Some(cx.waker().clone());
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut s = self.state.borrow_mut();
            s.wakers[i] = None;
            s.free.push(i);
        }
    }
}
