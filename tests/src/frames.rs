//! Frames for BPF_PROG_TEST_RUN, built with etherparse's header types so the bytes follow
//! the RFCs independently of the parser under test.

use std::net::IpAddr;

use etherparse::{
    EtherType, Ethernet2Header, IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader,
};

pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        dport: u16,
        syn: bool,
        ack: bool,
    },
    Udp {
        dport: u16,
    },
    /// ICMP echo request (ICMPv6 on IPv6).
    Icmp,
    /// Any other protocol number, with `len` bytes of payload.
    Raw {
        protocol: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    HopByHop,
    DestOpts,
    /// Destination options padded to 512 bytes, to make a chain longer than the part of a
    /// packet TC sees without pulling.
    LongDestOpts,
    Routing,
    Auth,
    Fragment {
        offset: u16,
        more: bool,
    },
}

#[derive(Clone, Debug)]
pub struct FrameSpec {
    /// TPIDs of the VLAN tags, outermost first.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    /// Destination address; `None` is 10.0.0.2 or fd00::2, by the source's family.
    pub dst: Option<IpAddr>,
    /// Source port of TCP and UDP.
    pub sport: u16,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgment number.
    pub ack_number: u32,
    pub l4: L4,
    /// IPv4 option bytes (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    /// IPv4 fragment offset (in 8-byte units) and more-fragments flag.
    pub ipv4_fragment: (u16, bool),
    pub ipv6_exts: Vec<Ext>,
    pub payload: usize,
    /// The payload's bytes; `None` is `payload` filler bytes.
    pub content: Option<Vec<u8>>,
}

impl FrameSpec {
    pub fn new(src: &str, l4: L4) -> Self {
        Self {
            vlans: Vec::new(),
            src: src.parse().expect("test source address"),
            dst: None,
            sport: 40000,
            seq: 1,
            ack_number: 0,
            l4,
            ipv4_options: 0,
            ipv4_fragment: (0, false),
            ipv6_exts: Vec::new(),
            payload: 16,
            content: None,
        }
    }

    /// Carries `content` as its payload (an HTTP request, say).
    pub fn content(mut self, content: &[u8]) -> Self {
        self.payload = content.len();
        self.content = Some(content.to_vec());
        self
    }

    /// A segment from port `sport` of `src` to `dst`: a server's response to a client.
    pub fn reply(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        let mut spec = Self::tcp(src, dport, false, true);
        spec.sport = sport;
        spec.dst = Some(dst.parse().expect("test destination address"));
        spec
    }

    /// The server's SYN-ACK to this client segment's connection, with initial sequence
    /// number `isn` (TC egress then notes the connection as accepted).
    pub fn syn_ack(&self, isn: u32) -> Vec<u8> {
        let L4::Tcp { dport, .. } = self.l4 else {
            panic!("a SYN-ACK answers a TCP segment");
        };
        let server = match self.src {
            IpAddr::V4(_) => IpAddr::V4(self.dst_v4().into()),
            IpAddr::V6(_) => IpAddr::V6(self.dst_v6().into()),
        };
        let mut spec = Self::new(
            &server.to_string(),
            L4::Tcp {
                dport: self.sport,
                syn: true,
                ack: true,
            },
        );
        spec.sport = dport;
        spec.dst = Some(self.src);
        spec.seq = isn;
        spec.ack_number = self.seq;
        spec.payload = 0;
        spec.build()
    }

    /// As a segment of a client that completed the handshake with a server whose initial
    /// sequence number was `isn`, before the server sent anything: it acknowledges `isn + 1`.
    pub fn acking(mut self, isn: u32) -> Self {
        self.ack_number = isn.wrapping_add(1);
        self
    }

    pub fn udp(src: &str, dport: u16) -> Self {
        Self::new(src, L4::Udp { dport })
    }

    pub fn tcp(src: &str, dport: u16, syn: bool, ack: bool) -> Self {
        Self::new(src, L4::Tcp { dport, syn, ack })
    }

    pub fn icmp(src: &str) -> Self {
        Self::new(src, L4::Icmp)
    }

    pub fn vlans(mut self, tpids: &[u16]) -> Self {
        self.vlans = tpids.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut transport = Vec::new();
        let protocol = match &self.l4 {
            L4::Tcp { dport, syn, ack } => {
                let mut tcp = TcpHeader::new(self.sport, *dport, self.seq, 64240);
                tcp.syn = *syn;
                tcp.ack = *ack;
                tcp.acknowledgment_number = self.ack_number;
                tcp.write(&mut transport).unwrap();
                IpNumber::TCP
            }
            L4::Udp { dport } => {
                let udp = UdpHeader {
                    source_port: self.sport,
                    destination_port: *dport,
                    length: (8 + self.payload) as u16,
                    checksum: 0,
                };
                udp.write(&mut transport).unwrap();
                IpNumber::UDP
            }
            L4::Icmp if self.src.is_ipv4() => {
                transport.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
                IpNumber::ICMP
            }
            L4::Icmp => {
                transport.extend_from_slice(&[128, 0, 0, 0, 0, 1, 0, 1]);
                IpNumber::IPV6_ICMP
            }
            L4::Raw { protocol } => IpNumber(*protocol),
        };
        match &self.content {
            Some(content) => transport.extend_from_slice(content),
            None => transport.extend(std::iter::repeat_n(0xab, self.payload)),
        }

        let (ether_type, network) = match self.src {
            IpAddr::V4(src) => (
                EtherType::IPV4,
                self.ipv4(src.octets(), protocol, &transport),
            ),
            IpAddr::V6(src) => (
                EtherType::IPV6,
                self.ipv6(src.octets(), protocol, &transport),
            ),
        };

        let mut frame = Vec::new();
        let first_type = self
            .vlans
            .first()
            .map_or(ether_type, |&tpid| EtherType(tpid));
        Ethernet2Header {
            source: [2, 0, 0, 0, 0, 1],
            destination: [2, 0, 0, 0, 0, 2],
            ether_type: first_type,
        }
        .write(&mut frame)
        .unwrap();
        for (i, _) in self.vlans.iter().enumerate() {
            let inner = self
                .vlans
                .get(i + 1)
                .map_or(ether_type, |&tpid| EtherType(tpid));
            SingleVlanHeader {
                pcp: Default::default(),
                drop_eligible_indicator: false,
                vlan_id: etherparse::VlanId::try_new(100 + i as u16).unwrap(),
                ether_type: inner,
            }
            .write(&mut frame)
            .unwrap();
        }
        frame.extend_from_slice(&network);
        frame
    }

    fn dst_v4(&self) -> [u8; 4] {
        match self.dst {
            Some(IpAddr::V4(dst)) => dst.octets(),
            Some(IpAddr::V6(_)) => panic!("an IPv6 destination for an IPv4 source"),
            None => [10, 0, 0, 2],
        }
    }

    fn dst_v6(&self) -> [u8; 16] {
        match self.dst {
            Some(IpAddr::V6(dst)) => dst.octets(),
            Some(IpAddr::V4(_)) => panic!("an IPv4 destination for an IPv6 source"),
            None => "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        }
    }

    fn ipv4(&self, src: [u8; 4], protocol: IpNumber, transport: &[u8]) -> Vec<u8> {
        let mut ip =
            Ipv4Header::new(transport.len() as u16, 64, protocol, src, self.dst_v4()).unwrap();
        // NOP options, then end of list: content does not matter to a filter, length does.
        let mut options = vec![1u8; self.ipv4_options];
        if let Some(last) = options.last_mut() {
            *last = 0;
        }
        ip.options = options[..]
            .try_into()
            .expect("IPv4 options: a multiple of 4, at most 40");
        ip.fragment_offset = IpFragOffset::try_new(self.ipv4_fragment.0).unwrap();
        ip.more_fragments = self.ipv4_fragment.1;
        ip.total_len = (ip.header_len() + transport.len()) as u16;
        ip.header_checksum = ip.calc_header_checksum();
        let mut out = Vec::new();
        ip.write(&mut out).unwrap();
        // A non-first fragment carries payload bytes, not the transport header.
        out.extend_from_slice(transport);
        out
    }

    fn ipv6(&self, src: [u8; 16], protocol: IpNumber, transport: &[u8]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, ext) in self.ipv6_exts.iter().enumerate() {
            let next = self.ipv6_exts.get(i + 1).map_or(protocol, ext_number);
            match ext {
                Ext::HopByHop | Ext::DestOpts | Ext::Routing => {
                    Ipv6RawExtHeader::new_raw(next, &[0; 14])
                        .unwrap()
                        .write(&mut exts)
                        .unwrap();
                }
                Ext::LongDestOpts => {
                    Ipv6RawExtHeader::new_raw(next, &[0; 510])
                        .unwrap()
                        .write(&mut exts)
                        .unwrap();
                }
                Ext::Auth => {
                    IpAuthHeader::new(next, 1, 1, &[0; 12])
                        .unwrap()
                        .write(&mut exts)
                        .unwrap();
                }
                Ext::Fragment { offset, more } => {
                    Ipv6FragmentHeader {
                        next_header: next,
                        fragment_offset: IpFragOffset::try_new(*offset).unwrap(),
                        more_fragments: *more,
                        identification: 7,
                    }
                    .write(&mut exts)
                    .unwrap();
                }
            }
        }
        let first = self.ipv6_exts.first().map_or(protocol, ext_number);
        let ip = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: (exts.len() + transport.len()) as u16,
            next_header: first,
            hop_limit: 64,
            source: src,
            destination: self.dst_v6(),
        };
        let mut out = Vec::new();
        ip.write(&mut out).unwrap();
        out.extend_from_slice(&exts);
        out.extend_from_slice(transport);
        out
    }
}

fn ext_number(ext: &Ext) -> IpNumber {
    match ext {
        Ext::HopByHop => IpNumber::IPV6_HEADER_HOP_BY_HOP,
        Ext::DestOpts | Ext::LongDestOpts => IpNumber::IPV6_DESTINATION_OPTIONS,
        Ext::Routing => IpNumber::IPV6_ROUTE_HEADER,
        Ext::Auth => IpNumber::AUTHENTICATION_HEADER,
        Ext::Fragment { .. } => IpNumber::IPV6_FRAGMENTATION_HEADER,
    }
}

/// A frame of another ethertype (ARP, LLDP...) with `len` bytes of payload.
pub fn non_ip(ether_type: u16, len: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    Ethernet2Header {
        source: [2, 0, 0, 0, 0, 1],
        destination: [0xff; 6],
        ether_type: EtherType(ether_type),
    }
    .write(&mut frame)
    .unwrap();
    frame.extend(std::iter::repeat_n(0, len));
    frame
}
