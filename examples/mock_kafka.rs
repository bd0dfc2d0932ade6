//! librdkafka's in-process mock cluster as a standalone process: prints its
//! bootstrap address and serves until killed. For benchmarks and for trying the
//! Kafka sink without a broker (it keeps messages in memory only).
//!
//! `cargo run --release --example mock_kafka -- [brokers] [topic ...]`

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers: i32 = args.next().map(|b| b.parse()).transpose()?.unwrap_or(3);
    let cluster = rdkafka::mocking::MockCluster::new(brokers)?;
    for topic in args {
        cluster.create_topic(&topic, 3, brokers.min(3))?;
    }
    println!("{}", cluster.bootstrap_servers());
    loop {
        std::thread::park();
    }
}
