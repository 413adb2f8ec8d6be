//! Round-robin and smooth weighted round-robin over real origins.

use crate::common::{spawn_origin, spawn_pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_three_backends() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let c = spawn_origin("c").await;
    let proxy = spawn_pool(
        &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
        "    strategy: round_robin\n",
    )
    .await;
    for _ in 0..100 {
        let (status, _) = proxy.get("/").await;
        assert_eq!(status, 200);
    }
    let hits = [a.hits(), b.hits(), c.hits()];
    assert_eq!(hits.iter().sum::<u64>(), 100);
    for h in hits {
        assert!((33..=34).contains(&h), "uneven spread {hits:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_three_to_one_interleave_smoothly() {
    let heavy = spawn_origin("heavy").await;
    let light = spawn_origin("light").await;
    let proxy = spawn_pool(
        &[(heavy.addr, 3), (light.addr, 1)],
        "    strategy: weighted\n",
    )
    .await;
    let mut sequence = Vec::new();
    for _ in 0..100 {
        let (status, origin) = proxy.get("/").await;
        assert_eq!(status, 200);
        sequence.push(origin);
    }
    let light_count = sequence.iter().filter(|o| *o == "light").count();
    assert_eq!(light_count, 25, "sequence {sequence:?}");
    assert_eq!(heavy.hits(), 75);
    for window in sequence.windows(4) {
        assert!(
            window.iter().any(|o| o == "light"),
            "4 requests without the light backend: {sequence:?}"
        );
    }
    let mut run = 0;
    for o in &sequence {
        run = if o == "heavy" { run + 1 } else { 0 };
        assert!(
            run <= 3,
            "more than 3 in a row to the heavy backend: {sequence:?}"
        );
    }
}
