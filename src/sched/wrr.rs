//! wrr placeholder
use super::*;
#[derive(Debug)]
pub struct WeightedRoundRobin;
impl WeightedRoundRobin { pub fn new(_o: &SchedOptions) -> Self { WeightedRoundRobin } }
impl Scheduler for WeightedRoundRobin {
    fn name(&self) -> &'static str { "wrr" }
    fn on_change(&mut self, _d: &[Dest], _c: Change) {}
    fn schedule(&mut self, _d: &[Dest], _r: &Request) -> Option<usize> { todo!() }
}
