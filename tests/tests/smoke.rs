use dpop_tests::{AgentOptions, TestAgent};

#[test]
fn hello() {
    let agent = TestAgent::start(AgentOptions::new());
    let hello = agent.client().hello().expect("hello");
    assert_eq!(hello.protocol, 1);
}
