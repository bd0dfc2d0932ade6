//! librdkafka's in-process mock cluster as a standalone process: prints its
//! bootstrap address and serves until killed or its stdin closes. For benchmarks,
//! chaos runs, and trying the Kafka sink without a broker (it keeps messages in
//! memory only).
//!
//! Lines on stdin take brokers down and up (ids from 1): `down 2`, `up 2`.
//!
//! `cargo run --release --example mock_kafka -- [brokers] [topic ...]`

use std::io::BufRead;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers: i32 = args.next().map(|b| b.parse()).transpose()?.unwrap_or(3);
    let cluster = rdkafka::mocking::MockCluster::new(brokers)?;
    for topic in args {
        cluster.create_topic(&topic, 3, brokers.min(3))?;
    }
    println!("{}", cluster.bootstrap_servers());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let result = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["down", id] => cluster.broker_down(id.parse()?),
            ["up", id] => cluster.broker_up(id.parse()?),
            _ => {
                eprintln!("mock_kafka: unknown command {line:?} (down N | up N)");
                continue;
            }
        };
        if let Err(e) = result {
            eprintln!("mock_kafka: {line}: {e}");
        }
    }
    Ok(())
}
