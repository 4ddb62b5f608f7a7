//! Places for calls to run: a call waits for one before it does its work (on a call thread, or
//! where it arrived when it arrived alone), and holds it until that work ends.
//!
//! There are `Limits::max_calls_running` places in all, and a caller (told apart by its
//! credential, before it is judged) takes at most `Limits::max_calls_running_per_caller` of them:
//! its further calls wait in a line of their own, not in front of everyone else's. A call waits
//! for the total only once it has its caller's place, so when a flood of slow calls (searches
//! over many candidates, reads of large records) from one credential holds every place, another
//! caller still gets the next one that frees; a share below the total also leaves places free.
//!
//! A read or write that arrives while nothing else is under way on the node, on a store of
//! local files, may run on the runtime's thread that took it ([`CallPlaces::arrive`],
//! [`CallPlace::run_here`]): at low load a hand-off to a resting thread and back costs more than
//! the work.
//!
//! Any other call's work runs on one of the node's call threads ([`CallPlace::run`]), at most as many
//! as there are places: a place given back at the end of a call's work lets the next call in
//! before its thread is idle again, and a pool that starts a thread whenever none is idle (as
//! tokio's blocking pool does) then grows past the places under load. Here a thread is started
//! only while there are fewer than calls whose work has not ended (a call's work ends just
//! before it gives its place back): the next call waits the moment it takes a thread to be idle
//! again, and never for another call's work to end.
//!
//! Invariant: a `CallPlace` holds one permit of its caller's semaphore and one of the total; a
//! caller's semaphore is in the map while anything holds or waits for one of its permits. The
//! call threads number at most the total of places, at least the calls whose work has been
//! handed to them and not ended (up to that total), and run nothing but the work of calls that
//! hold a place.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    thread::Thread,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Who a call counts under: a digest of its credential (never the credential).
pub type CallerKey = [u8; 32];

/// The places of one node.
#[derive(Debug)]
pub struct CallPlaces {
    total: Arc<Semaphore>,
    per_caller: usize,
    callers: Arc<Mutex<HashMap<CallerKey, Arc<Semaphore>>>>,
    threads: Arc<CallThreads>,
    /// What is under way on the node: places held, calls between their arrival and their
    /// answer ([`CallPlaces::arrive`]), background jobs ([`CallPlaces::working`]).
    busy: Arc<AtomicUsize>,
    /// Whether a call that arrives alone may run on the thread that took it (the store
    /// answers from files on this machine, `MetaStore::answers_from_local_files`).
    alone_here: bool,
}

/// A call counted from its arrival to its answer, or a background job while it runs
/// (dropped: answered, given up, or done).
#[derive(Debug)]
pub struct Arrival {
    busy: Arc<AtomicUsize>,
    alone: bool,
}

impl Arrival {
    /// Whether the call arrived with nothing else under way on this node (no place held, no
    /// other call waiting for its answer, no background job), where a lone call may run on
    /// the thread that took it ([`CallPlace::run_here`]).
    pub fn alone(&self) -> bool {
        self.alone
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A call's place, given back when dropped.
#[derive(Debug)]
pub struct CallPlace {
    total: Option<OwnedSemaphorePermit>,
    mine: Option<OwnedSemaphorePermit>,
    /// Counted under way from when both permits are held until dropped.
    held: Option<Arrival>,
    key: CallerKey,
    callers: Arc<Mutex<HashMap<CallerKey, Arc<Semaphore>>>>,
    threads: Arc<CallThreads>,
}

/// A call's work, boxed for a call thread.
type Job = Box<dyn FnOnce() + Send>;

/// The threads calls run on: started as calls need them, never more than `most`, kept while
/// the node runs (they end when the places are dropped).
///
/// A job is queued, and taken by a thread that ends its work or by the thread that became idle
/// last, woken alone: at low load the same thread, its caches warm, takes call after call, and
/// under load a thread that ends a job takes the next without anyone being woken.
struct CallThreads {
    pool: Arc<Mutex<Pool>>,
    started: AtomicUsize,
    /// Jobs queued or running whose work has not ended.
    unfinished: AtomicUsize,
    most: usize,
}

impl std::fmt::Debug for CallThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallThreads")
            .field("started", &self.started.load(Ordering::Relaxed))
            .field("unfinished", &self.unfinished.load(Ordering::Relaxed))
            .field("most", &self.most)
            .finish_non_exhaustive()
    }
}

/// What the call threads share: the jobs no thread has taken, the idle threads (the last to
/// rest on top), how many of them have been woken and not yet looked at the queue, and whether
/// the threads are to end.
#[derive(Default)]
struct Pool {
    queue: VecDeque<Job>,
    idle: Vec<Arc<Rest>>,
    waking: usize,
    closed: bool,
}

/// Where an idle call thread rests: whether it has been woken, and the thread to wake.
struct Rest {
    woken: AtomicBool,
    thread: Thread,
}

impl Pool {
    /// Takes the idle thread to wake for a queued job, if one is idle and none is waking up
    /// already (that one takes the job, or, finding another thread took it, rests again; a
    /// thread that takes a job with more queued wakes the next one, so a burst of jobs wakes
    /// its threads one after another and never waits for a job's work).
    fn take_to_wake(&mut self) -> Option<Arc<Rest>> {
        if self.waking > 0 || self.queue.is_empty() {
            return None;
        }
        let rest = self.idle.pop()?;
        rest.woken.store(true, Ordering::Release);
        self.waking += 1;
        Some(rest)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CallThreads {
    fn new(most: usize) -> Self {
        Self {
            pool: Arc::default(),
            started: AtomicUsize::new(0),
            unfinished: AtomicUsize::new(0),
            most: most.max(1),
        }
    }

    /// Queues `job` and starts threads until there are as many as unfinished jobs (at most
    /// `most`): a queued job then never waits for another job's work to end, only for a
    /// thread that has ended its own to take the next. The job must call `finished` when its
    /// work ends, before it gives its place back.
    fn submit(&self, job: Job) {
        let want = self
            .unfinished
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1)
            .min(self.most);
        let woken = {
            let mut pool = lock(&self.pool);
            pool.queue.push_back(job);
            pool.take_to_wake()
        };
        if let Some(rest) = woken {
            rest.thread.unpark();
        }
        let mut started = self.started.load(Ordering::SeqCst);
        while started < want {
            if let Err(now) = self.started.compare_exchange(
                started,
                started + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                // Another call started one meanwhile: count again.
                started = now;
                continue;
            }
            let pool = Arc::clone(&self.pool);
            let spawned = std::thread::Builder::new()
                .name("kluis-call".into())
                .spawn(move || work(&pool));
            if let Err(e) = spawned {
                self.started.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot start a call thread; the call waits for a running one");
                return;
            }
            started += 1;
        }
    }

    /// A job's work has ended (called before its place is given back, so that the call that
    /// takes the place next does not count it).
    fn finished(&self) {
        self.unfinished.fetch_sub(1, Ordering::SeqCst);
    }

    /// Threads resting now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        lock(&self.pool).idle.len()
    }

    /// Threads started so far.
    #[cfg(test)]
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

impl Drop for CallThreads {
    /// Ends the threads: each idle one is woken to find the pool closed, each busy one finds
    /// it so when its job ends (no job is queued: a queued job holds a place, and a place
    /// holds these threads).
    fn drop(&mut self) {
        let idle = {
            let mut pool = lock(&self.pool);
            pool.closed = true;
            std::mem::take(&mut pool.idle)
        };
        for rest in idle {
            rest.thread.unpark();
        }
    }
}

/// A call thread: runs the queued jobs, then rests until it is woken for another, until the
/// pool is closed.
fn work(pool: &Mutex<Pool>) {
    let rest = Arc::new(Rest {
        woken: AtomicBool::new(false),
        thread: std::thread::current(),
    });
    let mut shared = lock(pool);
    loop {
        if let Some(job) = shared.queue.pop_front() {
            let next = shared.take_to_wake();
            drop(shared);
            if let Some(next) = next {
                next.thread.unpark();
            }
            job();
            shared = lock(pool);
            continue;
        }
        if shared.closed {
            return;
        }
        shared.idle.push(Arc::clone(&rest));
        drop(shared);
        while !rest.woken.load(Ordering::Acquire) {
            // A wake-up may come before this (then `park` returns at once) or without cause.
            std::thread::park();
            if lock(pool).closed {
                return;
            }
        }
        shared = lock(pool);
        rest.woken.store(false, Ordering::Relaxed);
        shared.waking -= 1;
    }
}

/// A call's work that panicked (the call thread goes on).
#[derive(Debug)]
pub struct CallFailed;

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call's work panicked")
    }
}

/// The result of [`CallPlace::run`], once its work is done.
#[derive(Debug)]
pub struct CallTask<T>(oneshot::Receiver<Result<T, CallFailed>>);

impl<T> Future for CallTask<T> {
    type Output = Result<T, CallFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(CallFailed)))
    }
}

/// The node is stopping: no more places are given.
#[derive(Debug)]
pub struct Closed;

impl CallPlaces {
    /// `total` places, at most `per_caller` of them for one caller.
    pub fn new(total: usize, per_caller: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_caller,
            callers: Arc::default(),
            threads: Arc::new(CallThreads::new(total)),
            busy: Arc::default(),
            alone_here: false,
        }
    }

    /// Lets a call that arrives alone run on the thread that took it (`true` only for a store
    /// that answers from local files).
    pub fn with_alone_here(mut self, alone_here: bool) -> Self {
        self.alone_here = alone_here;
        self
    }

    /// Counts a call under way until the returned `Arrival` is dropped (when it is answered);
    /// it arrived alone when nothing else was under way then and lone calls may run here.
    pub fn arrive(&self) -> Arrival {
        let before = self.busy.fetch_add(1, Ordering::SeqCst);
        Arrival {
            busy: Arc::clone(&self.busy),
            alone: before == 0 && self.alone_here,
        }
    }

    /// Counts a background job (a sweep, a key job, following other nodes) as under way while
    /// the returned guard lives: a call that arrives meanwhile does not run on the runtime's
    /// thread, where it could wait behind the job's transaction.
    pub fn working(&self) -> Arrival {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Arrival {
            busy: Arc::clone(&self.busy),
            alone: false,
        }
    }

    /// Waits, in order, for a place among `key`'s and then for one among all.
    pub async fn take(&self, key: CallerKey) -> Result<CallPlace, Closed> {
        let own = {
            let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(
                callers
                    .entry(key)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller))),
            )
        };
        // From here on the place's drop tidies the map, whatever happens below.
        let mut place = CallPlace {
            total: None,
            mine: None,
            held: None,
            key,
            callers: Arc::clone(&self.callers),
            threads: Arc::clone(&self.threads),
        };
        place.mine = Some(own.acquire_owned().await.map_err(|_| Closed)?);
        place.total = Some(
            Arc::clone(&self.total)
                .acquire_owned()
                .await
                .map_err(|_| Closed)?,
        );
        place.held = Some(self.working());
        Ok(place)
    }

    /// Callers with a semaphore in the map.
    #[cfg(test)]
    fn callers(&self) -> usize {
        self.callers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl CallPlace {
    /// Runs `f` on one of the node's call threads, inside the runtime of the caller (so that
    /// `f` may wait on it), and gives this place back when `f` returns. A panic in `f` is
    /// `CallFailed`, and the thread goes on.
    pub fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> CallTask<T> {
        let (tx, rx) = oneshot::channel();
        let runtime = tokio::runtime::Handle::try_current().ok();
        let threads = Arc::clone(&self.threads);
        threads.submit(Box::new(move || {
            let _inside = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let place = self;
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            place.threads.finished();
            drop(place);
            // The caller may have gone (its call timed out): nobody to tell.
            let _ = tx.send(done.map_err(|_| CallFailed));
        }));
        CallTask(rx)
    }
}

impl CallPlace {
    /// Runs `f` as [`CallPlace::run`] does, telling nobody when it ends: `f` answers its
    /// caller itself (and catches its own panics to do so; one that escapes is logged, and the
    /// thread goes on).
    pub fn run_detached(self, f: impl FnOnce() + Send + 'static) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let threads = Arc::clone(&self.threads);
        threads.submit(Box::new(move || {
            let _inside = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let place = self;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                tracing::error!("a call's work panicked");
            }
            place.threads.finished();
            drop(place);
        }));
    }
}

impl CallPlace {
    /// Runs `f` on this thread, holding this place until it returns: for a call that arrived
    /// alone ([`Arrival::alone`]) on a runtime with another worker, whose hand-off to a resting
    /// call thread and back would cost more than its work (waking a thread takes tens of
    /// microseconds), and whose wait for the disk then blocks one runtime worker while the
    /// others serve what arrives meanwhile (which then goes to the call threads). `f` must not
    /// wait on the runtime (`Handle::block_on` panics on a runtime's thread): only work that
    /// waits on threads and the disk runs here. `f` answers its caller and catches its own
    /// panics, as for [`CallPlace::run_detached`].
    pub fn run_here(self, f: impl FnOnce()) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            tracing::error!("a call's work panicked");
        }
        drop(self);
    }
}

impl Drop for CallPlace {
    fn drop(&mut self) {
        self.held.take();
        self.total.take();
        self.mine.take();
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody holds or waits for one of its permits (a waiter holds
        // a clone, taken under this lock).
        if callers
            .get(&self.key)
            .is_some_and(|own| Arc::strong_count(own) == 1)
        {
            callers.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_takes_at_most_its_share_and_others_get_the_rest() {
        let places = Arc::new(CallPlaces::new(3, 2));
        let (a, b) = ([1; 32], [2; 32]);
        let a1 = places.take(a).await.unwrap();
        let _a2 = places.take(a).await.unwrap();
        // A third of Alice's waits behind her own two, not in front of Bob.
        let waiting = {
            let places = Arc::clone(&places);
            tokio::spawn(async move { places.take(a).await.unwrap() })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let b1 = places.take(b).await.unwrap();
        // All three places are taken: Bob's next waits for the total.
        let next = {
            let places = Arc::clone(&places);
            tokio::spawn(async move { places.take(b).await.unwrap() })
        };
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        // Alice's first ends: her waiting call has her share's place, then Bob's gets the
        // total's once his first ends.
        drop(a1);
        drop(b1);
        let a3 = waiting.await.unwrap();
        let b2 = next.await.unwrap();
        drop((a3, b2, _a2));
        // Nobody holds or waits: the map is empty again.
        assert_eq!(places.callers(), 0);
    }

    /// A call runs on the thread that took it only when it arrived with nothing else in
    /// flight, on places that allow it; while it is in flight, the next does not, and once it
    /// is answered, the next does again. A panic in its work is caught there.
    #[tokio::test]
    async fn only_a_call_that_arrives_alone_runs_where_it_arrived() {
        let places = CallPlaces::new(4, 4).with_alone_here(true);
        let first = places.arrive();
        assert!(first.alone());
        let second = places.arrive();
        assert!(!second.alone(), "another call is in flight");
        drop(first);
        assert!(!places.arrive().alone(), "the second is still in flight");
        drop(second);
        let third = places.arrive();
        assert!(third.alone());
        let here = std::thread::current().id();
        let ran = Arc::new(Mutex::new(None));
        let place = places.take([1; 32]).await.unwrap();
        let seen = Arc::clone(&ran);
        place.run_here(move || *lock(&seen) = Some(std::thread::current().id()));
        assert_eq!(*lock(&ran), Some(here));
        assert_eq!(
            places.total.available_permits(),
            4,
            "the place is given back when the work returns"
        );
        places
            .take([1; 32])
            .await
            .unwrap()
            .run_here(|| panic!("the work fails"));
        assert_eq!(places.total.available_permits(), 4);
        drop(third);
        // A place held by another call (any call, not only a read or write), or a background
        // job counted as working, keeps the next from arriving alone.
        let held = places.take([2; 32]).await.unwrap();
        assert!(!places.arrive().alone(), "a place is held");
        drop(held);
        let job = places.working();
        assert!(!places.arrive().alone(), "a background job runs");
        drop(job);
        assert!(places.arrive().alone());
        // Places that do not allow it (a store over a network) never run a call here.
        let remote = CallPlaces::new(4, 4);
        assert!(!remote.arrive().alone());
    }

    /// Calls run on at most as many threads as there are places, however many come, each
    /// inside the runtime; a call whose work panics fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_run_on_no_more_threads_than_places() {
        let places = Arc::new(CallPlaces::new(3, 3));
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..300u64 {
            let places = Arc::clone(&places);
            calls.spawn(async move {
                let place = places.take([(i % 7) as u8; 32]).await.unwrap();
                place
                    .run(move || {
                        std::thread::sleep(std::time::Duration::from_micros(50));
                        assert!(tokio::runtime::Handle::try_current().is_ok());
                        i
                    })
                    .await
                    .unwrap()
            });
        }
        let mut sum = 0;
        while let Some(done) = calls.join_next().await {
            sum += done.unwrap();
        }
        assert_eq!(sum, (0..300).sum::<u64>());
        assert!(places.threads.started() <= 3, "{:?}", places.threads);
        // A panic is this call's failure only.
        let failed = places
            .take([1; 32])
            .await
            .unwrap()
            .run(|| -> u8 { std::panic::panic_any("boom") })
            .await;
        assert!(failed.is_err());
        let ok = places.take([1; 32]).await.unwrap().run(|| 7).await;
        assert_eq!(ok.unwrap(), 7);
        assert_eq!(places.callers(), 0);
    }

    /// A call handed to a thread that is about to take another never waits for that other
    /// call's work: here the first blocks until the second has run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_never_waits_for_another_calls_work() {
        for round in 0..100 {
            let places = CallPlaces::new(4, 4);
            // One thread started and idle again ...
            places
                .take([0; 32])
                .await
                .unwrap()
                .run(|| ())
                .await
                .unwrap();
            let (ran, seen) = std::sync::mpsc::channel::<()>();
            let first = places.take([1; 32]).await.unwrap();
            let second = places.take([2; 32]).await.unwrap();
            // ... and two calls handed over at once: the first waits for the second.
            let first =
                first.run(move || seen.recv_timeout(std::time::Duration::from_secs(5)).is_ok());
            let second = second.run(move || ran.send(()).is_ok());
            assert!(second.await.unwrap());
            assert!(
                first.await.unwrap(),
                "round {round}: the second call waited for the first ({:?})",
                places.threads
            );
            assert_eq!(places.threads.started(), 2, "{:?}", places.threads);
        }
    }

    /// Calls one after another run on the thread that ran the last: the one whose caches are
    /// warm, woken alone, and not each on the next of the idle threads in turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_one_after_another_run_on_the_thread_that_rested_last() {
        let places = CallPlaces::new(4, 4);
        // Four threads, all busy at once, then all idle.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let (ready, started) = std::sync::mpsc::channel::<()>();
        let mut calls = Vec::new();
        for i in 0..4u8 {
            let (wait, ready) = (Arc::clone(&wait), ready.clone());
            calls.push(places.take([i; 32]).await.unwrap().run(move || {
                ready.send(()).unwrap();
                lock(&wait).recv().unwrap();
            }));
        }
        for _ in 0..4 {
            started
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap();
        }
        for _ in 0..4 {
            go.send(()).unwrap();
        }
        for call in calls {
            call.await.unwrap();
        }
        assert_eq!(places.threads.started(), 4);
        let mut ran_on = std::collections::HashSet::new();
        for i in 0..20u8 {
            // The call before has been answered; its thread rests once it is back in the pool.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while places.threads.idle() < 4 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            let place = places.take([i; 32]).await.unwrap();
            ran_on.insert(place.run(|| std::thread::current().id()).await.unwrap());
        }
        assert_eq!(ran_on.len(), 1, "calls one after another ran on {ran_on:?}");
    }

    /// The call threads end once the places are gone, after the jobs still queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_threads_end_when_the_places_are_dropped() {
        let places = CallPlaces::new(3, 3);
        let mut calls = Vec::new();
        for i in 0..3u8 {
            calls.push(places.take([i; 32]).await.unwrap().run(move || i));
        }
        let jobs = Arc::clone(&places.threads.pool);
        drop(places);
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        assert_eq!(answers, [0, 1, 2]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&jobs) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            Arc::strong_count(&jobs),
            1,
            "a call thread is still running"
        );
    }

    #[tokio::test]
    async fn a_call_that_gives_up_waiting_leaves_nothing_behind() {
        let places = Arc::new(CallPlaces::new(1, 1));
        let held = places.take([1; 32]).await.unwrap();
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), places.take([2; 32])).await;
        assert!(gave_up.is_err());
        // One that gives up waiting behind its own caller's place.
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), places.take([1; 32])).await;
        assert!(gave_up.is_err());
        drop(held);
        assert_eq!(places.callers(), 0);
        let _again = places.take([2; 32]).await.unwrap();
    }
}
