//! Choosing a member of a pool: smooth weighted round robin (nginx's), least outstanding
//! requests, power of two random choices, and a consistent-hash ring of virtual nodes.
//! Each works on the members that may take requests now, with their effective weights
//! (slow start lowers a recovering member's).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rand::Rng;

use super::Member;

/// A member that may take a request now, with its effective weight (at least 1).
pub struct Candidate<'a> {
    pub member: &'a Arc<Member>,
    pub weight: u64,
}

/// Smooth weighted round robin: every candidate's current weight grows by its weight, the
/// largest is chosen and pays back the total. Over any window a member's share matches
/// its weight, interleaved rather than in bursts. The caller holds the pool's lock.
pub fn round_robin<'a>(candidates: &[Candidate<'a>]) -> Option<&'a Arc<Member>> {
    let total: i64 = candidates.iter().map(|c| c.weight as i64).sum();
    let mut best: Option<(&Candidate<'a>, i64)> = None;
    for candidate in candidates {
        let current = candidate
            .member
            .current_weight
            .fetch_add(candidate.weight as i64, Relaxed)
            + candidate.weight as i64;
        if best.is_none_or(|(_, top)| current > top) {
            best = Some((candidate, current));
        }
    }
    let (chosen, _) = best?;
    chosen.member.current_weight.fetch_sub(total, Relaxed);
    Some(chosen.member)
}

/// Outstanding requests per unit of weight, compared without division.
fn is_less_loaded(a: &Candidate<'_>, b: &Candidate<'_>) -> bool {
    let load = |c: &Candidate<'_>| c.member.outstanding.load(Relaxed) as u64;
    load(a) * b.weight < load(b) * a.weight
}

/// The candidate with the fewest outstanding requests for its weight; ties go to the one
/// after `start` in order, so equal members share the work.
pub fn least_outstanding<'a>(
    candidates: &[Candidate<'a>],
    start: usize,
) -> Option<&'a Arc<Member>> {
    let count = candidates.len();
    let mut best = candidates.get(start % count.max(1))?;
    for offset in 1..count {
        let candidate = &candidates[(start + offset) % count];
        if is_less_loaded(candidate, best) {
            best = candidate;
        }
    }
    Some(best.member)
}

/// Two candidates drawn at random by weight; the less loaded of them.
pub fn power_of_two<'a>(
    candidates: &[Candidate<'a>],
    rng: &mut impl Rng,
) -> Option<&'a Arc<Member>> {
    let total: u64 = candidates.iter().map(|c| c.weight).sum();
    let mut draw = || {
        let mut point = rng.random_range(0..total.max(1));
        for candidate in candidates {
            if point < candidate.weight {
                return candidate;
            }
            point -= candidate.weight;
        }
        &candidates[candidates.len() - 1]
    };
    if candidates.is_empty() {
        return None;
    }
    let first = draw();
    let second = draw();
    Some(if is_less_loaded(second, first) {
        second.member
    } else {
        first.member
    })
}

/// Virtual nodes per unit of weight: enough that 1/N of the keys move (within a few
/// percent) when one of N members goes.
const VIRTUAL_NODES: u32 = 160;

/// A hash ring over every member (eligible or not, so that a member's trouble moves only
/// its own keys): virtual nodes at hashes of the member's address and an index.
#[derive(Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new(members: &[Arc<Member>]) -> Ring {
        let mut points = Vec::new();
        for (index, member) in members.iter().enumerate() {
            for node in 0..VIRTUAL_NODES * member.weight.max(1) {
                let label = format!("{}#{node}", member.address);
                points.push((hash(label.as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The members in ring order from `key`'s point: the first that may take the request
    /// is its server.
    pub fn walk(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(point, _)| *point < hash(key));
        let (before, after) = self.points.split_at(start.min(self.points.len()));
        after.iter().chain(before).map(|(_, index)| *index)
    }
}

/// 64 bits of blake3: well mixed, and the same on every machine and run.
pub fn hash(bytes: &[u8]) -> u64 {
    let digest = blake3::hash(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::pool::Member;

    fn members(weights: &[u32]) -> Vec<Arc<Member>> {
        weights
            .iter()
            .enumerate()
            .map(|(n, weight)| Arc::new(Member::for_test(&format!("10.0.0.{n}:80"), *weight)))
            .collect()
    }

    fn candidates(members: &[Arc<Member>]) -> Vec<Candidate<'_>> {
        members
            .iter()
            .map(|member| Candidate {
                member,
                weight: u64::from(member.weight),
            })
            .collect()
    }

    /// nginx's example: weights 5, 1, 1 give a a a b a c a ... interleaved, exact shares.
    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let members = members(&[5, 1, 1]);
        let candidates = candidates(&members);
        let order: Vec<String> = (0..7)
            .map(|_| round_robin(&candidates).unwrap().address.clone())
            .collect();
        assert_eq!(
            order,
            [
                "10.0.0.0:80",
                "10.0.0.0:80",
                "10.0.0.1:80",
                "10.0.0.0:80",
                "10.0.0.2:80",
                "10.0.0.0:80",
                "10.0.0.0:80"
            ]
        );
    }

    /// Power of two choices: the busier member is chosen only when both draws are it.
    #[test]
    fn power_of_two_prefers_the_less_loaded_of_its_draws() {
        use rand::SeedableRng;
        let members = members(&[1, 1]);
        members[0].outstanding.store(5, Relaxed);
        let candidates = candidates(&members);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let busy = (0..1000)
            .filter(|_| power_of_two(&candidates, &mut rng).unwrap().address == "10.0.0.0:80")
            .count();
        assert!(
            (150..350).contains(&busy),
            "the busy member was chosen {busy} times in 1000"
        );
    }

    /// Removing one of N members moves only its keys, about 1/N of them (issue 15 asks at
    /// most 1.3/N over 10k keys); every other key stays where it was.
    #[test]
    fn the_ring_moves_about_one_nth_of_keys_when_a_member_goes() {
        let all = members(&[1, 1, 1, 1, 1]);
        let fewer: Vec<Arc<Member>> = all[..4].to_vec();
        let (ring, smaller) = (Ring::new(&all), Ring::new(&fewer));
        let mut moved = 0;
        for key in 0..10_000u32 {
            let key = key.to_le_bytes();
            let before = &all[ring.walk(&key).next().unwrap()].address;
            let after = &fewer[smaller.walk(&key).next().unwrap()].address;
            if before != after {
                assert_eq!(before, "10.0.0.4:80", "only the removed member's keys move");
                moved += 1;
            }
        }
        let share = f64::from(moved) / 10_000.0;
        assert!(share <= 1.3 / 5.0, "{share} of keys moved");
        assert!(share >= 0.7 / 5.0, "{share} of keys moved");
    }
}
