//! `IdPage`: the window every id-ordered listing (audit log, security events) shares — a time
//! range, a page size and a cursor below the last id seen, newest first.

use super::time::Timestamp;

#[derive(Clone, Copy, Debug, Default)]
pub struct IdPage {
    /// Inclusive lower bound on the listing's time column.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound on the listing's time column.
    pub to: Option<Timestamp>,
    pub limit: usize,
    /// Continue below this id.
    pub before_id: Option<i64>,
}
