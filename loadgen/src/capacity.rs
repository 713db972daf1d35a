//! `loadgen capacity`: the highest open-loop rate whose latency percentile
//! meets the objective. A closed-loop run finds the peak; open-loop steps
//! climb from a fraction of it until the objective breaks; a short bisection
//! between the last good and the first bad rate sharpens the answer.

use std::time::Duration;

use serde::Serialize;

use crate::config::LoadConfig;
use crate::runner::{self, Mode};

/// The objective and the search's pace.
#[derive(Debug, Clone)]
pub struct CapacityPlan {
    /// p99 must be at most this.
    pub slo_p99: Option<Duration>,
    /// p99.9 must be at most this.
    pub slo_p999: Option<Duration>,
    /// Length of each step.
    pub step: Duration,
    /// First open-loop rate, percent of the closed-loop peak.
    pub start_pct: f64,
    /// Increase per step, percent of the peak.
    pub step_pct: f64,
    /// Bisection rounds after the climb.
    pub refine: u32,
}

/// One measured rate.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub target_rate: f64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub errors: u64,
    pub backlog: u64,
    pub client_cpu_us_per_op: Option<f64>,
    pub server_cpu_us_per_op: Option<f64>,
    pub met: bool,
    /// Why the step failed, empty when it met the objective.
    pub reason: String,
}

/// The search's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub slo_p99_us: Option<f64>,
    pub slo_p999_us: Option<f64>,
    pub closed_loop_peak: f64,
    /// Highest rate that met the objective (0 when none did).
    pub capacity_ops_per_sec: f64,
    pub steps: Vec<Step>,
}

/// Judges a step against the objective.
pub fn judge(
    plan: &CapacityPlan,
    target: f64,
    achieved: f64,
    p99_us: f64,
    p999_us: f64,
    errors: u64,
) -> String {
    let mut why = Vec::new();
    if errors > 0 {
        why.push(format!("{errors} errors"));
    }
    if achieved < 0.95 * target {
        why.push(format!("achieved {achieved:.0} of {target:.0} ops/s"));
    }
    if let Some(slo) = plan.slo_p99 {
        let slo_us = slo.as_secs_f64() * 1e6;
        if p99_us > slo_us {
            why.push(format!("p99 {p99_us:.0} us > {slo_us:.0} us"));
        }
    }
    if let Some(slo) = plan.slo_p999 {
        let slo_us = slo.as_secs_f64() * 1e6;
        if p999_us > slo_us {
            why.push(format!("p99.9 {p999_us:.0} us > {slo_us:.0} us"));
        }
    }
    why.join(", ")
}

fn measure(cfg: &LoadConfig, plan: &CapacityPlan, rate: f64) -> anyhow::Result<Step> {
    let out = runner::run(cfg, Mode::Open { rate })?;
    let s = crate::report::Summary::new(cfg, Mode::Open { rate }, "", &out);
    let failures = s.errors + s.connections_lost;
    let reason = judge(
        plan,
        rate,
        s.ops_per_sec,
        s.latency_us.p99,
        s.latency_us.p999,
        failures,
    );
    let step = Step {
        target_rate: rate,
        ops_per_sec: s.ops_per_sec,
        p50_us: s.latency_us.p50,
        p99_us: s.latency_us.p99,
        p999_us: s.latency_us.p999,
        errors: failures,
        backlog: s.backlog,
        client_cpu_us_per_op: s.client_cpu_us_per_op,
        server_cpu_us_per_op: s.server_cpu_us_per_op,
        met: reason.is_empty(),
        reason,
    };
    eprintln!(
        "capacity: {:>10.0} ops/s target -> {:>10.0} achieved, \
         p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us: {}",
        step.target_rate,
        step.ops_per_sec,
        step.p50_us,
        step.p99_us,
        step.p999_us,
        if step.met { "meets" } else { &step.reason }
    );
    Ok(step)
}

/// Runs the search.
pub fn search(cfg: &LoadConfig, plan: &CapacityPlan) -> anyhow::Result<CapacityReport> {
    anyhow::ensure!(
        plan.slo_p99.is_some() || plan.slo_p999.is_some(),
        "give --slo-p99 and/or --slo-p999"
    );
    anyhow::ensure!(
        plan.start_pct > 0.0 && plan.step_pct > 0.0,
        "step percentages must be > 0"
    );
    let mut step_cfg = cfg.clone();
    step_cfg.duration = plan.step;
    step_cfg.requests = None;
    step_cfg.progress = false;
    let peak_run = runner::run(&step_cfg, Mode::Closed)?;
    let peak = peak_run.stats.ops() as f64 / (peak_run.window_ns as f64 / 1e9);
    anyhow::ensure!(peak > 0.0, "the closed-loop run completed no request");
    eprintln!("capacity: closed-loop peak {peak:.0} ops/s");

    let mut steps = Vec::new();
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    let mut pct = plan.start_pct;
    while pct <= 150.0 {
        let rate = peak * pct / 100.0;
        let step = measure(&step_cfg, plan, rate)?;
        let met = step.met;
        steps.push(step);
        if met {
            good = Some(rate);
        } else {
            bad = Some(rate);
            break;
        }
        pct += plan.step_pct;
    }
    if let Some(mut hi) = bad {
        let mut lo = good.unwrap_or(0.0);
        for _ in 0..plan.refine {
            let mid = (lo + hi) / 2.0;
            if mid < 1.0 || hi - lo < peak * 0.01 {
                break;
            }
            let step = measure(&step_cfg, plan, mid)?;
            if step.met {
                lo = mid;
                good = Some(mid);
            } else {
                hi = mid;
            }
            steps.push(step);
        }
    }
    Ok(CapacityReport {
        slo_p99_us: plan.slo_p99.map(|d| d.as_secs_f64() * 1e6),
        slo_p999_us: plan.slo_p999.map(|d| d.as_secs_f64() * 1e6),
        closed_loop_peak: peak,
        capacity_ops_per_sec: good.unwrap_or(0.0),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judging_a_step() {
        let plan = CapacityPlan {
            slo_p99: Some(Duration::from_millis(1)),
            slo_p999: Some(Duration::from_millis(5)),
            step: Duration::from_secs(1),
            start_pct: 10.0,
            step_pct: 10.0,
            refine: 2,
        };
        assert_eq!(judge(&plan, 1000.0, 990.0, 800.0, 4000.0, 0), "");
        assert!(judge(&plan, 1000.0, 990.0, 1200.0, 4000.0, 0).contains("p99 1200"));
        assert!(judge(&plan, 1000.0, 990.0, 800.0, 6000.0, 0).contains("p99.9"));
        assert!(judge(&plan, 1000.0, 900.0, 800.0, 4000.0, 0).contains("achieved"));
        assert!(judge(&plan, 1000.0, 990.0, 800.0, 4000.0, 3).contains("3 errors"));
    }
}
