//! PostgreSQL transaction ids: 32-bit xids, as pgoutput's Begin carries them, widened to
//! xid8, as `pg_current_snapshot()` and `pg_visible_in_snapshot()` take them.
//!
//! An xid8 (PostgreSQL's `FullTransactionId`) is `epoch × 2^32 + xid`: the epoch counts how
//! often the 32-bit xid has wrapped. Every cluster older than 2^32 transactions is in epoch 1
//! or later.

/// The xid8 whose low 32 bits are `xid` and that lies nearest to `xmax` (an xid8): the one in
/// `xmax - 2^31 ..= xmax + 2^31 - 1`.
///
/// In numbers: `xmax + ((xid - xmax mod 2^32) mod 2^32, read as a signed 32-bit integer)`.
/// This is PostgreSQL's own rule for a 32-bit xid known to be within 2^31 of a reference
/// (`FullXidRelativeTo` in `src/backend/storage/ipc/procarray.c`, PostgreSQL 14 and later,
/// which computes `U64FromFullTransactionId(rel) + (int32) (xid - rel_xid)`). It holds for any
/// xid still in use: PostgreSQL freezes an xid before it assigns the one 2^31 after it
/// (wraparound protection), and a transaction the daemon checks is at most a few thousand
/// xids from a fresh snapshot's xmax.
///
/// The xid may be on either side of `xmax`. PostgreSQL's `FullTransactionIdFromAllowableAt`
/// (and `xid8funcs.c`'s `widen_snapshot_xid` before it) instead assume `xid <= reference` and
/// move any larger xid to the previous epoch; that is right against the *next* xid, but not
/// against a snapshot's xmax: a commit waiting for a synchronous standby is already in the
/// logical stream while its xid is still at or above xmax. Moved to the previous epoch it
/// looks long finished, hence visible.
///
/// Never panics. Results below 0 or above `u64::MAX` — an xid "before epoch 0" or "after the
/// last epoch", which PostgreSQL never hands out — are clamped to 0 and `u64::MAX`.
pub fn widen(xid: u32, xmax: u64) -> u64 {
    // The truncations are the point: the low halves' distance, modulo 2^32, read as signed.
    let distance = xid.wrapping_sub(xmax as u32) as i32;
    xmax.saturating_add_signed(i64::from(distance))
}

#[cfg(test)]
mod tests {
    use super::widen;

    const EPOCH: u64 = 1 << 32;
    const HALF: u64 = 1 << 31;

    #[test]
    fn epoch_0_below_at_and_above_xmax() {
        assert_eq!(widen(700, 724), 700);
        assert_eq!(widen(724, 724), 724);
        assert_eq!(widen(730, 724), 730);
        assert_eq!(widen(3, 724), 3);
    }

    #[test]
    fn epoch_1_and_later_below_at_and_above_xmax() {
        for epoch in [1, 2, 7, u64::from(u32::MAX - 1)] {
            let base = epoch * EPOCH;
            assert_eq!(widen(700, base + 724), base + 700, "epoch {epoch}");
            assert_eq!(widen(724, base + 724), base + 724, "epoch {epoch}");
            // Above xmax: a commit waiting for a synchronous standby. The previous epoch
            // (base - EPOCH + 730) would make it look long committed.
            assert_eq!(widen(725, base + 724), base + 725, "epoch {epoch}");
            assert_eq!(widen(730, base + 724), base + 730, "epoch {epoch}");
        }
    }

    #[test]
    fn across_the_wrap_both_ways() {
        // xmax just past the wrap, the xid just before it: the previous epoch.
        assert_eq!(widen(u32::MAX, EPOCH + 5), EPOCH - 1);
        assert_eq!(widen(u32::MAX - 10, 3 * EPOCH + 3), 3 * EPOCH - 11);
        // xmax just before the wrap, the xid just after it: the next epoch. (After
        // 2^32 - 1 PostgreSQL assigns 2^32 + 3: 0 to 2 are special.)
        assert_eq!(widen(3, EPOCH - 1), EPOCH + 3);
        assert_eq!(widen(3, 2 * EPOCH - 1), 2 * EPOCH + 3);
        assert_eq!(widen(100, EPOCH - 50), EPOCH + 100);
    }

    #[test]
    fn the_window_is_2_pow_31_either_side_half_open() {
        let xmax = 5 * EPOCH + 0x1000;
        assert_eq!(widen(0x1000 + (HALF - 1) as u32, xmax), xmax + HALF - 1);
        // One further is nearer from below.
        assert_eq!(widen(0x1000 + HALF as u32, xmax), xmax - HALF);
        assert_eq!(widen(0x1000 - 1, xmax), xmax - 1);
    }

    #[test]
    fn extremes_clamp_instead_of_panicking() {
        assert_eq!(widen(0, 0), 0);
        assert_eq!(widen(u32::MAX, 0), 0); // would be -1
        assert_eq!(widen((HALF - 1) as u32, 0), HALF - 1);
        assert_eq!(widen(HALF as u32, 0), 0); // would be -2^31
        assert_eq!(widen(0, u64::MAX), u64::MAX); // would be 2^64
        assert_eq!(widen(u32::MAX, u64::MAX), u64::MAX);
        assert_eq!(widen(u32::MAX - 1, u64::MAX), u64::MAX - 1);
        assert_eq!(
            widen(0, u64::MAX - u64::from(u32::MAX)),
            u64::MAX - u64::from(u32::MAX)
        );
        assert_eq!(widen(5, u64::MAX - 1), u64::MAX); // would be 2^64 + 5
        assert_eq!(widen(HALF as u32, u64::MAX - HALF), u64::MAX - HALF + 1);
    }

    /// The defining property, over xmax values at and around every boundary and pseudo-random
    /// ones: any xid8 `x` within the window of `xmax` comes back from its low half; anything
    /// widened has the given low half and lies in the window (unless clamped).
    #[test]
    fn round_trips_within_the_window() {
        let lows = [
            0,
            1,
            2,
            3,
            4,
            724,
            HALF - 2,
            HALF - 1,
            HALF,
            HALF + 1,
            EPOCH - 4,
            EPOCH - 2,
            EPOCH - 1,
        ];
        let epochs = [0, 1, 2, u64::from(u32::MAX) - 1, u64::from(u32::MAX)];
        let mut xmaxes: Vec<u64> = epochs
            .iter()
            .flat_map(|e| lows.iter().map(move |l| e * EPOCH + l))
            .collect();
        let mut seed = 0x5eed_u64;
        xmaxes.extend((0..2000).map(|_| splitmix64(&mut seed)));
        let offsets = [
            -(HALF as i64),
            -(HALF as i64) + 1,
            -1_000_000,
            -4,
            -3,
            -1,
            0,
            1,
            3,
            4,
            1_000_000,
            HALF as i64 - 2,
            HALF as i64 - 1,
        ];
        for &xmax in &xmaxes {
            for &offset in &offsets {
                if let Some(x) = xmax.checked_add_signed(offset) {
                    assert_eq!(widen(x as u32, xmax), x, "x {x}, xmax {xmax}");
                }
            }
            for _ in 0..50 {
                let xid = splitmix64(&mut seed) as u32;
                let wide = widen(xid, xmax);
                let clamped = wide == 0 || wide == u64::MAX;
                if !clamped {
                    assert_eq!(wide as u32, xid, "xid {xid}, xmax {xmax}");
                    let distance = i128::from(wide) - i128::from(xmax);
                    assert!(
                        (-(1i128 << 31)..(1i128 << 31)).contains(&distance),
                        "xid {xid}, xmax {xmax}: {wide}"
                    );
                }
            }
        }
    }

    /// A deterministic pseudo-random sequence (SplitMix64), so that failures reproduce.
    fn splitmix64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
