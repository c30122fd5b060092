//! The delay levels a message or a retry may name, written as RocketMQ
//! writes them: `"1s 5s 10s 30s 1m 2m …"`, level N being the Nth entry.

use crate::constants::DELAY_LEVELS_MAX;
use std::time::Duration;

/// RocketMQ's levels (`messageDelayLevel`).
pub const DELAY_LEVELS_DEFAULT: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";
/// A retry's first back-off is level 3 + its reconsume times (RocketMQ).
const RETRY_FIRST_LEVEL: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayLevels(Vec<Duration>);

impl Default for DelayLevels {
    fn default() -> Self {
        Self::parse(DELAY_LEVELS_DEFAULT).unwrap_or_else(|_| Self(vec![Duration::from_secs(1)]))
    }
}

impl DelayLevels {
    /// Parses space-separated durations with a unit each: ms, s, m, h or d.
    pub fn parse(text: &str) -> Result<Self, String> {
        let levels: Vec<Duration> = text.split_whitespace().map(parse_duration).collect::<Result<_, _>>()?;
        if levels.is_empty() || levels.len() > DELAY_LEVELS_MAX {
            return Err(format!("delay_levels has 1 to {DELAY_LEVELS_MAX} entries, not {}", levels.len()));
        }
        Ok(Self(levels))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The delay of level `level` (1-based), if there is one.
    pub fn delay(&self, level: u32) -> Option<Duration> {
        level.checked_sub(1).and_then(|index| self.0.get(index as usize)).copied()
    }

    /// The back-off level of a message delivered `reconsume_times` times
    /// after its first: 3 + reconsume_times, capped at the last level.
    pub fn retry_level(&self, reconsume_times: u32) -> u32 {
        RETRY_FIRST_LEVEL.saturating_add(reconsume_times).min(self.0.len() as u32)
    }
}

fn parse_duration(word: &str) -> Result<Duration, String> {
    let split = word.find(|character: char| !character.is_ascii_digit()).unwrap_or(word.len());
    let (number, unit) = word.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("delay level {word:?} does not start with a number"))?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => return Err(format!("delay level {word:?}: the unit is one of ms, s, m, h, d")),
    };
    millis.map(Duration::from_millis).ok_or_else(|| format!("delay level {word:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocketmqs_levels_parse_and_level_n_is_the_nth_entry() {
        let levels = DelayLevels::default();
        assert_eq!(levels.len(), 18);
        assert_eq!(levels.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(levels.delay(5), Some(Duration::from_secs(60)));
        assert_eq!(levels.delay(18), Some(Duration::from_secs(7200)));
        assert_eq!(levels.delay(0), None);
        assert_eq!(levels.delay(19), None);
    }

    #[test]
    fn any_length_and_every_unit_parse_and_nonsense_is_refused() {
        let levels = DelayLevels::parse("100ms 2s 1m 1h 1d").expect("levels");
        assert_eq!(levels.delay(1), Some(Duration::from_millis(100)));
        assert_eq!(levels.delay(5), Some(Duration::from_secs(86_400)));
        for bad in ["", "5", "5x", "s", "1s -2s", "99999999999999999999d"] {
            assert!(DelayLevels::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn retries_back_off_from_level_three_up_to_the_last() {
        let levels = DelayLevels::default();
        assert_eq!(levels.retry_level(0), 3);
        assert_eq!(levels.retry_level(1), 4);
        assert_eq!(levels.retry_level(15), 18);
        assert_eq!(levels.retry_level(u32::MAX), 18);
        assert_eq!(DelayLevels::parse("1s 2s").expect("two").retry_level(0), 2);
    }
}
