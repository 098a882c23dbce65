//! rr placeholder
use super::*;
#[derive(Debug)]
pub struct RoundRobin;
impl RoundRobin { pub fn new(_o: &SchedOptions) -> Self { RoundRobin } }
impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str { "rr" }
    fn on_change(&mut self, _d: &[Dest], _c: Change) {}
    fn schedule(&mut self, _d: &[Dest], _r: &Request) -> Option<usize> { todo!() }
}
