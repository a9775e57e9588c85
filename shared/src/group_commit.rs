//! Group commit, the one way every stage shares a costly step among the
//! items that arrive together: the api's publish lanes (jobs under one
//! confirm, in messages of bounded size) and its replica rounds (draws
//! under one `WAIT`), the worker's batches (deliveries under one bulk
//! write, in requests of bounded size) and the chat-system's transactions
//! (writes under one commit).
//!
//! Two moves, both bounded by [`Limits`] (a count and a size, each stage
//! saying what it counts and measures):
//!
//! - [`take_waiting`]: the first item (waiting for it), then whatever is
//!   already waiting, never waiting for more. No stage waits to fill a
//!   group: under light load an item goes alone and at once; under load
//!   the group is what arrived while the last step ran.
//! - [`split`] / [`first_group`]: items in order, in consecutive groups
//!   within the limits; an item too large for any group goes alone.
//!
//! Architecture invariant: no stage gathers or splits its items by code of
//! its own.

use tokio::sync::mpsc;

/// What one item weighs: how many it counts as, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight {
    pub count: usize,
    pub size: usize,
}

impl Weight {
    /// An item that counts once and has no size to speak of.
    pub const ONE: Self = Self { count: 1, size: 0 };
}

/// The most one group may hold: a count and a size (bytes, or records:
/// what the stage measures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub count: usize,
    pub size: usize,
}

impl Limits {
    /// At most `count` items, of any size.
    pub const fn count(count: usize) -> Self {
        Self {
            count,
            size: usize::MAX,
        }
    }

    /// At most `size` in all, of any number of items.
    pub const fn size(size: usize) -> Self {
        Self {
            count: usize::MAX,
            size,
        }
    }
}

/// A group being filled.
struct Group {
    used: Weight,
    limits: Limits,
}

impl Group {
    fn new(limits: Limits) -> Self {
        Self {
            used: Weight { count: 0, size: 0 },
            limits,
        }
    }

    /// Whether nothing more may be taken.
    fn is_full(&self) -> bool {
        self.used.count >= self.limits.count.max(1) || self.used.size >= self.limits.size
    }

    /// Whether `weight` can join: always into an empty group.
    fn fits(&self, weight: Weight) -> bool {
        self.used.count == 0
            || (self.used.count.saturating_add(weight.count) <= self.limits.count
                && self.used.size.saturating_add(weight.size) <= self.limits.size)
    }

    fn add(&mut self, weight: Weight) {
        self.used.count = self.used.count.saturating_add(weight.count);
        self.used.size = self.used.size.saturating_add(weight.size);
    }
}

/// Waits for the first item of `receiver`, then appends to `into` every
/// item already waiting until the group is full (the last item taken may
/// pass the limits: it cannot be put back). The number taken; 0 once every
/// sender is gone and nothing is left.
pub async fn take_waiting<T>(
    receiver: &mut mpsc::Receiver<T>,
    into: &mut Vec<T>,
    limits: Limits,
    weigh: impl Fn(&T) -> Weight,
) -> usize {
    let Some(first) = receiver.recv().await else {
        return 0;
    };
    let mut group = Group::new(limits);
    group.add(weigh(&first));
    into.push(first);
    let mut taken = 1;
    while !group.is_full() {
        match receiver.try_recv() {
            Ok(item) => {
                group.add(weigh(&item));
                into.push(item);
                taken += 1;
            }
            Err(_) => break,
        }
    }
    taken
}

/// Appends to `into` the items `next` has ready (it answers `None` when
/// none is) until the group, which holds `first` already, is full. For
/// sources that are not a channel (a consumer's stream).
pub fn take_ready<T>(
    first: T,
    mut next: impl FnMut() -> Option<T>,
    limits: Limits,
    weigh: impl Fn(&T) -> Weight,
) -> Vec<T> {
    let mut group = Group::new(limits);
    group.add(weigh(&first));
    let mut items = vec![first];
    while !group.is_full() {
        let Some(item) = next() else { break };
        group.add(weigh(&item));
        items.push(item);
    }
    items
}

/// `items` in order, in consecutive groups within `limits`; an item that
/// alone passes them goes in a group of its own.
pub fn split<T>(
    items: impl IntoIterator<Item = T>,
    limits: Limits,
    weigh: impl Fn(&T) -> Weight,
) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = Vec::new();
    let mut group = Group::new(limits);
    for item in items {
        let weight = weigh(&item);
        match groups.last_mut() {
            Some(last) if group.fits(weight) => last.push(item),
            _ => {
                group = Group::new(limits);
                groups.push(vec![item]);
            }
        }
        group.add(weight);
    }
    groups
}

/// How many of `items` go in the first group [`split`] would make (at
/// least one, unless `items` is empty).
pub fn first_group<T>(items: &[T], limits: Limits, weigh: impl Fn(&T) -> Weight) -> usize {
    let mut group = Group::new(limits);
    items
        .iter()
        .take_while(|item| {
            let weight = weigh(item);
            let fits = group.fits(weight);
            if fits {
                group.add(weight);
            }
            fits
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(item: &usize) -> Weight {
        Weight {
            count: 1,
            size: *item,
        }
    }

    #[test]
    fn split_keeps_order_and_limits_and_sends_an_oversized_item_alone() {
        let groups = split([4, 4, 4, 20, 1, 1, 1], Limits { count: 2, size: 10 }, bytes);
        assert_eq!(
            groups,
            vec![vec![4, 4], vec![4], vec![20], vec![1, 1], vec![1]]
        );
        assert_eq!(
            first_group(&[4, 4, 4], Limits { count: 2, size: 10 }, bytes),
            2
        );
        assert_eq!(first_group(&[20, 1], Limits::size(10), bytes), 1);
        assert_eq!(first_group::<usize>(&[], Limits::size(10), bytes), 0);
        assert!(split(Vec::<usize>::new(), Limits::size(10), bytes).is_empty());
    }

    #[tokio::test]
    async fn take_waiting_takes_what_is_there_up_to_the_limits_and_never_waits_for_more() {
        let (sender, mut receiver) = mpsc::channel(16);
        for item in [3, 3, 3, 3, 3] {
            sender.send(item).await.unwrap();
        }
        let mut taken = Vec::new();
        // Full once 9 bytes are in: the third item passes the limit.
        let count = take_waiting(&mut receiver, &mut taken, Limits::size(7), bytes).await;
        assert_eq!((count, taken.len()), (3, 3));

        let mut taken = Vec::new();
        let count = take_waiting(&mut receiver, &mut taken, Limits::count(10), bytes).await;
        assert_eq!(count, 2, "two were waiting; it does not wait for a third");

        drop(sender);
        assert_eq!(
            take_waiting(&mut receiver, &mut taken, Limits::count(10), bytes).await,
            0
        );
    }

    #[test]
    fn take_ready_counts_what_each_item_counts_as() {
        let mut ready = vec![5, 5, 5].into_iter();
        let weigh = |jobs: &usize| Weight {
            count: *jobs,
            size: 1,
        };
        let items = take_ready(5, || ready.next(), Limits::count(12), weigh);
        assert_eq!(items, vec![5, 5, 5], "10 jobs is not full; 15 is");
    }
}
