//! RFC 2782 target selection, pure: SRV records ordered by priority, then by weighted random
//! draws within each priority; a target that is down is tried only after every target that is up
//! (*demote, not remove*, as route selection does with trunks). The caller gives one random value;
//! the order is a pure function of the records, their health and that value.
use crate::routing::SplitMix64;

/// What ordering needs of one target: its SRV priority and weight, and whether it is up.
pub trait Weighted {
    /// SRV priority: lower first.
    fn priority(&self) -> u16;
    /// SRV weight: the share of selections among targets of equal priority.
    fn weight(&self) -> u16;
    /// Whether its health check says it is up.
    fn up(&self) -> bool;
}

/// Orders `items` as RFC 2782 §"Usage rules" says, health first: up before down, then priority
/// ascending, then, within each (health, priority) group, repeated weighted draws without
/// replacement. Weight 0 targets are placed at the start of their group's draw list (the RFC's
/// rule), so they are chosen rarely: only when the draw is 0, or when they are the last left.
pub fn order<T: Weighted>(mut items: Vec<T>, random: u64) -> Vec<T> {
    items.sort_by_key(|t| (!t.up(), t.priority(), t.weight() != 0));
    let mut rng = SplitMix64(random);
    let mut start = 0;
    while start < items.len() {
        let key = (items[start].up(), items[start].priority());
        let end = start
            + items[start..]
                .iter()
                .take_while(|t| (t.up(), t.priority()) == key)
                .count();
        draw(&mut items[start..end], &mut rng);
        start = end;
    }
    items
}

/// RFC 2782: sum the weights of the remaining records, pick a uniform number in `0..=sum`, take
/// the first record whose running sum reaches it; repeat with the rest.
fn draw<T: Weighted>(group: &mut [T], rng: &mut SplitMix64) {
    for pos in 0..group.len().saturating_sub(1) {
        let total: u64 = group[pos..].iter().map(|t| u64::from(t.weight())).sum();
        let pick = rng.next() % (total + 1);
        let mut running = 0u64;
        let mut chosen = group.len() - 1;
        for (i, t) in group.iter().enumerate().skip(pos) {
            running += u64::from(t.weight());
            if running >= pick {
                chosen = i;
                break;
            }
        }
        group[pos..=chosen].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct T(&'static str, u16, u16, bool);

    impl Weighted for T {
        fn priority(&self) -> u16 {
            self.1
        }
        fn weight(&self) -> u16 {
            self.2
        }
        fn up(&self) -> bool {
            self.3
        }
    }

    fn names(v: &[T]) -> Vec<&'static str> {
        v.iter().map(|t| t.0).collect()
    }

    #[test]
    fn lowest_priority_first_whatever_the_weights() {
        let items = vec![
            T("b1", 20, 1000, true),
            T("a", 10, 1, true),
            T("c", 30, 0, true),
            T("b2", 20, 1000, true),
        ];
        for r in 0..200 {
            let o = order(items.clone(), r);
            assert_eq!(o[0].0, "a", "draw {r}");
            assert!(matches!(names(&o)[1..3], ["b1", "b2"] | ["b2", "b1"]));
            assert_eq!(o[3].0, "c");
        }
    }

    #[test]
    fn a_down_target_is_tried_after_every_up_one() {
        let items = vec![
            T("primary", 10, 1, false),
            T("backup", 20, 1, true),
            T("last", 30, 1, true),
        ];
        assert_eq!(names(&order(items, 7)), ["backup", "last", "primary"]);
    }

    #[test]
    fn equal_priorities_share_by_weight() {
        // 3:1 weights: the heavy target comes first in about three draws of four.
        let items = vec![T("heavy", 10, 30, true), T("light", 10, 10, true)];
        let n = 4000u64;
        let first_heavy = (0..n)
            .filter(|r| order(items.clone(), r.wrapping_mul(0x2545_F491_4F6C_DD1D))[0].0 == "heavy")
            .count() as u64;
        // Expected 30/41 (the draw is over 0..=40) ≈ 0.73; allow a wide band.
        assert!(
            (n * 65 / 100..n * 81 / 100).contains(&first_heavy),
            "heavy first {first_heavy} of {n}"
        );
    }

    #[test]
    fn zero_weight_is_chosen_rarely_but_still_tried() {
        let items = vec![T("zero", 10, 0, true), T("ten", 10, 10, true)];
        let n = 1000u64;
        let zero_first = (0..n)
            .filter(|r| order(items.clone(), *r)[0].0 == "zero")
            .count();
        assert!(zero_first < 200, "zero first {zero_first} of {n}");
        for r in 0..50 {
            assert_eq!(order(items.clone(), r).len(), 2, "nothing dropped");
        }
    }

    #[test]
    fn the_same_random_value_gives_the_same_order() {
        let items = vec![T("a", 1, 5, true), T("b", 1, 5, true), T("c", 1, 5, true)];
        assert_eq!(order(items.clone(), 42), order(items, 42));
    }
}
