//! Upper/lower connection thresholds (`-x`/`-y`) and the OVERLOAD flag (lvs-semantics.md §5).
//!
//! The counted quantity is `active + inactive` (persistence templates excluded). The flag only
//! blocks new scheduling decisions; it is stored in [`Dest::overloaded`], which the schedulers
//! read.
//!
//! Two kernel generations exist ([`Rule`]); both give the same answers for connections that
//! come and go one at a time (every example in the spec), they differ after threshold edits:
//! - [`Rule::Classic`] (2.6.x up to the 2026 stable updates, `ip_vs_bind_dest` /
//!   `ip_vs_unbind_dest` in `ip_vs_conn.c`, `__ip_vs_update_dest` in `ip_vs_ctl.c`): after every
//!   bind, set the flag if `total >= u`; after every unbind, clear it if `total < l` (l > 0) or
//!   `4 * total < 3 * u` (l = 0); an edit clears the flag at once when the new `u` is 0 or
//!   larger than the old one, and otherwise leaves it to the next bind.
//! - [`Rule::Crossing`] (2026 stable updates, e.g. Debian 6.12.117's
//!   `__ip_vs_dest_update_overload`): the flag is set only when a bind makes the total reach
//!   exactly `u`, cleared only when an unbind takes it from the lower value `lv` (= l, or
//!   `u - u/4` when l is 0) to `lv - 1`, and an edit that changes `u` or `l` re-evaluates at once
//!   (set if `total >= u`, clear if `total < lv`, else unchanged).
//!
//! nfvs defaults to [`Rule::Classic`], the behaviour §5 describes and the one every kernel before
//! 2026 has, matching the default of [`crate::sched::Overhead`].

use crate::service::Dest;

/// Which kernel's threshold logic to follow (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rule {
    #[default]
    Classic,
    Crossing,
}

/// `active + inactive` as the kernel's `int`/`u32` arithmetic sees it for sane counts.
fn total(d: &Dest) -> u32 {
    d.active.saturating_add(d.inactive)
}

/// The lower value the 2026 kernels store (`l_threshold_val`): l, or 75% of u rounded up.
fn lower_value(d: &Dest) -> u32 {
    if d.l_threshold != 0 {
        d.l_threshold
    } else {
        d.u_threshold - (d.u_threshold >> 2)
    }
}

impl Rule {
    /// After a new connection was bound to `d` (its counter already incremented).
    pub fn on_bind(self, d: &mut Dest) {
        match self {
            Rule::Classic => {
                if d.u_threshold != 0 && total(d) >= d.u_threshold {
                    d.overloaded = true;
                }
            }
            Rule::Crossing => {
                if d.u_threshold != 0 && total(d) == d.u_threshold {
                    d.overloaded = true;
                }
            }
        }
    }

    /// After a connection of `d` went away (its counter already decremented).
    pub fn on_unbind(self, d: &mut Dest) {
        let t = total(d);
        match self {
            Rule::Classic => {
                // `totalconns * 4 < u_threshold * 3` is computed in 32-bit unsigned arithmetic
                // in the kernel (u_threshold is __u32), so it wraps for u > 2^32 / 3; copied.
                let clear = if d.l_threshold != 0 {
                    t < d.l_threshold
                } else if d.u_threshold != 0 {
                    t.wrapping_mul(4) < d.u_threshold.wrapping_mul(3)
                } else {
                    true
                };
                if clear {
                    d.overloaded = false;
                }
            }
            Rule::Crossing => {
                // atomic_fetch_dec returned the old value t + 1.
                // Then: no threshold clears; at or above u sets (only reachable with l > u,
                // which the kernel refuses); below clears.
                if u64::from(t) + 1 == u64::from(lower_value(d)) {
                    d.overloaded = d.u_threshold != 0 && t >= d.u_threshold;
                }
            }
        }
    }

    /// `-e` of `d` with new thresholds `u` and `l` (the caller has checked `l <= u`).
    pub fn on_edit(self, d: &mut Dest, u: u32, l: u32) {
        match self {
            Rule::Classic => {
                if u == 0 || u > d.u_threshold {
                    d.overloaded = false;
                }
                d.u_threshold = u;
                d.l_threshold = l;
            }
            Rule::Crossing => {
                if d.u_threshold == u && d.l_threshold == l {
                    return;
                }
                d.u_threshold = u;
                d.l_threshold = l;
                let t = total(d);
                if u == 0 {
                    d.overloaded = false;
                } else if t >= u {
                    d.overloaded = true;
                } else if t < lower_value(d) {
                    d.overloaded = false;
                }
            }
        }
    }
}

/// [`Rule::on_bind`] with the default rule.
pub fn on_bind(d: &mut Dest) {
    Rule::default().on_bind(d)
}

/// [`Rule::on_unbind`] with the default rule.
pub fn on_unbind(d: &mut Dest) {
    Rule::default().on_unbind(d)
}

/// [`Rule::on_edit`] with the default rule.
pub fn on_edit(d: &mut Dest, u: u32, l: u32) {
    Rule::default().on_edit(d, u, l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::DestId;
    use std::net::Ipv4Addr;

    fn dest(u: u32, l: u32) -> Dest {
        let mut d = Dest::new(DestId(1), Ipv4Addr::new(10, 0, 0, 1), 80, 1);
        d.u_threshold = u;
        d.l_threshold = l;
        d
    }

    fn bind(rule: Rule, d: &mut Dest) {
        d.active += 1;
        rule.on_bind(d);
    }

    fn unbind(rule: Rule, d: &mut Dest) {
        d.active -= 1;
        rule.on_unbind(d);
    }

    #[test]
    fn set_at_u_clear_below_l_both_rules() {
        for rule in [Rule::Classic, Rule::Crossing] {
            let mut d = dest(3, 1);
            bind(rule, &mut d);
            bind(rule, &mut d);
            assert!(!d.overloaded, "{rule:?}");
            bind(rule, &mut d);
            assert!(d.overloaded, "{rule:?}: total 3 >= u 3");
            unbind(rule, &mut d);
            assert!(d.overloaded, "{rule:?}: total 2, not < l 1");
            unbind(rule, &mut d);
            assert!(d.overloaded, "{rule:?}: total 1, not < l 1");
            unbind(rule, &mut d);
            assert!(!d.overloaded, "{rule:?}: total 0 < l 1");
        }
    }

    #[test]
    fn l_zero_clears_at_three_quarters_of_u() {
        // u = 3: clear when 4 * total < 9, i.e. total <= 2. u = 8: clear when total < 6.
        for rule in [Rule::Classic, Rule::Crossing] {
            let mut d = dest(3, 0);
            (0..3).for_each(|_| bind(rule, &mut d));
            assert!(d.overloaded);
            unbind(rule, &mut d);
            assert!(!d.overloaded, "{rule:?}");

            let mut d = dest(8, 0);
            (0..8).for_each(|_| bind(rule, &mut d));
            unbind(rule, &mut d);
            unbind(rule, &mut d);
            assert!(d.overloaded, "{rule:?}: total 6");
            unbind(rule, &mut d);
            assert!(!d.overloaded, "{rule:?}: total 5 < 6");
        }
    }

    #[test]
    fn inactive_connections_count() {
        let mut d = dest(2, 0);
        d.inactive = 1;
        bind(Rule::Classic, &mut d);
        assert!(d.overloaded);
    }

    #[test]
    fn no_threshold_never_overloads() {
        for rule in [Rule::Classic, Rule::Crossing] {
            let mut d = dest(0, 0);
            (0..100).for_each(|_| bind(rule, &mut d));
            assert!(!d.overloaded);
        }
    }

    #[test]
    fn classic_edit_clears_on_raise_or_removal_only() {
        let mut d = dest(2, 0);
        bind(Rule::Classic, &mut d);
        bind(Rule::Classic, &mut d);
        assert!(d.overloaded);
        on_edit(&mut d, 2, 0); // same u: unchanged
        assert!(d.overloaded);
        on_edit(&mut d, 5, 0); // raised: cleared at once although total 2
        assert!(!d.overloaded);
        on_edit(&mut d, 1, 0); // lowered: left to the next bind
        assert!(!d.overloaded);
        bind(Rule::Classic, &mut d);
        assert!(d.overloaded, "total 3 >= 1 at the next bind");
        on_edit(&mut d, 0, 0);
        assert!(!d.overloaded);
    }

    #[test]
    fn crossing_edit_reevaluates_at_once() {
        let r = Rule::Crossing;
        let mut d = dest(0, 0);
        (0..4).for_each(|_| bind(r, &mut d));
        r.on_edit(&mut d, 3, 0); // total 4 >= 3: set now
        assert!(d.overloaded);
        r.on_edit(&mut d, 8, 0); // total 4 < lv 6: cleared
        assert!(!d.overloaded);
        r.on_edit(&mut d, 5, 4); // 4 < 5 and 4 >= 4: unchanged
        assert!(!d.overloaded);
        // With the crossing rule, going past u without hitting it exactly does not set.
        let mut d = dest(0, 0);
        d.active = 10;
        r.on_edit(&mut d, 12, 0);
        d.active = 13;
        r.on_bind(&mut d);
        assert!(!d.overloaded);
        Rule::Classic.on_bind(&mut d);
        assert!(d.overloaded);
    }
}
